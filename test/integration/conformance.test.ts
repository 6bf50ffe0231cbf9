/**
 * The conformance command against the diffusers reference fixtures, run as a user runs it (`bin/fluxql.js
 * conformance`, whose default is test/fixtures/flux-tiny-reference), plus a modified fixture directory to show it reads whatever the directory holds.
 */
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { openSafetensors, writeSafetensors } from '../../src/shared/weights/index.ts';
import { FIXTURES_DIR, MODEL_DIR, REPO_ROOT } from '../helpers/paths.ts';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'bin/fluxql.js');

interface Report {
  passed: number;
  failed: number;
  cases: { name: string; metric: string; value: number; limit: number; ok: boolean }[];
}

/** Runs `fluxql conformance`, with `--fixtures dir` when given (else the command's default, the repository's). */
async function conformance(dir?: string): Promise<{ code: number; report: Report }> {
  const args = dir ? ['--fixtures', dir] : [];
  try {
    const { stdout } = await run(process.execPath, [CLI, 'conformance', ...args], { maxBuffer: 1 << 24 });
    return { code: 0, report: JSON.parse(stdout.trim().split('\n').pop()!) };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, report: JSON.parse(e.stdout.trim().split('\n').pop()!) };
  }
}

describe('fluxql conformance', () => {
  it('passes every case of the repository diffusers fixtures (the default), on the embedded model', async () => {
    const { code, report } = await conformance();
    const failing = report.cases.filter((c) => !c.ok);
    expect(failing).toEqual([]);
    expect(code).toBe(0);
    const names = report.cases.map((c) => c.name);
    // 30 prompts × 2 tokenizers, 30 × 2 encoders, 1 transformer, 2 pipelines (4 + 6 steps, sigmas, image).
    expect(names.filter((n) => n.startsWith('tokenizer['))).toHaveLength(60);
    expect(names.filter((n) => n.startsWith('text_encoders['))).toHaveLength(60);
    expect(names).toContain('transformer');
    expect(names).toContain('pipeline[0].latents_after_step_3');
    expect(names).toContain('pipeline[1].latents_after_step_5');
    expect(names).toContain('pipeline[1].image');
    // The editing cases of test/fixtures/flux-tiny-edit come with the default fixtures: 2 img2img, 2 inpainting
    // (with the latent mask), 2 true CFG.
    for (const c of ['img2img_0', 'img2img_1', 'inpaint_0', 'inpaint_1', 'true_cfg_0', 'true_cfg_1']) {
      expect(names).toContain(`edit.${c}.image`);
      expect(names).toContain(`edit.${c}.steps_run`);
    }
    expect(names).toContain('edit.inpaint_1.mask_latents');
    expect(names).toContain('edit.img2img_1.latents_after_step_6');
    expect(report.passed).toBe(report.cases.length);
    for (const c of report.cases.filter((c) => c.metric === 'rel_error')) expect(c.limit).toBe(1e-4);
  });

  it('runs any directory in the same format and fails on a wrong reference', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-fixtures-'));
    symlinkSync(MODEL_DIR, join(dir, 'flux-tiny'));
    const index = JSON.parse(readFileSync(join(FIXTURES_DIR, 'index.json'), 'utf8'));
    // Only the second pipeline case and the transformer case, with the transformer reference perturbed.
    cpSync(join(FIXTURES_DIR, index.pipeline_cases[1].file), join(dir, 'case.safetensors'));
    const ref = openSafetensors(join(FIXTURES_DIR, index.transformer_case.file));
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const name of ref.names())
      tensors[name] = { dtype: 'F32', shape: [...ref.info(name).shape], data: ref.readF32(name) };
    ref.close();
    tensors.output!.data[0]! += 1;
    writeSafetensors(join(dir, 'transformer.safetensors'), tensors);
    writeFileSync(
      join(dir, 'index.json'),
      JSON.stringify({
        pipeline_cases: [{ ...index.pipeline_cases[1], file: 'case.safetensors' }],
        transformer_case: { file: 'transformer.safetensors' },
      }),
    );
    const { code, report } = await conformance(dir);
    expect(code).toBe(1);
    expect(report.cases.find((c) => c.name === 'transformer')?.ok).toBe(false);
    const pipelineCases = report.cases.filter((c) => c.name.startsWith('pipeline[0]'));
    expect(pipelineCases.length).toBe(6 + 2);
    expect(pipelineCases.every((c) => c.ok)).toBe(true);
    expect(report.cases.some((c) => c.name.startsWith('tokenizer'))).toBe(false);
    // Another fixture folder brings its own edit cases (none here).
    expect(report.cases.some((c) => c.name.startsWith('edit.'))).toBe(false);
  });
});
