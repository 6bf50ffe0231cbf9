/**
 * @file `fluxql conformance [--fixtures DIR] [--edit-fixtures DIR]`: runs every case listed in `DIR/index.json`
 * (default: the repository's `test/fixtures/flux-tiny-reference`) and the editing cases of the edit folder's
 * `edit_index.json` (img2img, inpainting, true CFG; default: the repository's `test/fixtures/flux-tiny-edit` when
 * `--fixtures` is the default, none otherwise) against `--model`, else `DIR/flux-tiny`, else models/flux-tiny, and
 * prints one JSON line `{"passed","failed","cases":[...]}`; exits 1 when a case fails.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { FLUX_TINY_DIR, loadPipelineSettings } from '../config.ts';
import type { EngineCompilerPort } from '../pipeline/flux/compiler-port.ts';
import { FluxPipeline } from '../pipeline/flux/pipeline.ts';
import {
  type CaseResult,
  pipelineCase,
  REFERENCE_LIMITS,
  textEncoderCases,
  tokenizerCases,
  transformerCase,
} from './conformance/cases.ts';
import { editCases } from './conformance/edit-cases.ts';
import { readFixtureIndex } from './conformance/fixture-index.ts';
import { loraCases, prepareLoraDir } from './conformance/lora-cases.ts';
import { DEFAULT_EDIT_FIXTURES_DIR, DEFAULT_FIXTURES_DIR } from './defaults.ts';

/**
 * Runs the cases and returns the report (also used by tests). `editFixtures`: a folder with `edit_index.json`
 * whose cases run on the same model after the others.
 */
export async function conformanceReport(
  compiler: EngineCompilerPort,
  fixtures: string,
  model: string | undefined,
  mode = 'original',
  editFixtures?: string,
) {
  const index = readFixtureIndex(fixtures);
  // The repository's fixtures leave out their model copy: it is models/flux-tiny (never the default flux-mini).
  const modelDir = model ?? (existsSync(join(fixtures, 'flux-tiny')) ? join(fixtures, 'flux-tiny') : FLUX_TINY_DIR);
  // LoRAs are read only from a LoRA folder: the fixture LoRAs (and a constructed BFL Control LoRA) are staged in one.
  const loraDir = index.lora_cases.length > 0 ? prepareLoraDir(fixtures, index, modelDir) : undefined;
  const { cacheDir, ortSpin } = loadPipelineSettings();
  const pipe = await FluxPipeline.fromPretrained(modelDir, {
    compiler,
    cacheDir,
    ortSpin,
    modes: [mode],
    loraDir: loraDir?.dir,
  });
  try {
    const run = { pipe, dir: fixtures, index, mode, limits: REFERENCE_LIMITS };
    const cases: CaseResult[] = [
      ...tokenizerCases(run),
      ...(await textEncoderCases(run)),
      ...(await transformerCase(run)),
    ];
    for (const [i, c] of index.pipeline_cases.entries())
      cases.push(...(await pipelineCase(pipe, fixtures, c, i, mode, REFERENCE_LIMITS)));
    cases.push(...(await loraCases(run, modelDir)));
    if (editFixtures) cases.push(...(await editCases(pipe, editFixtures, mode, REFERENCE_LIMITS)));
    const failed = cases.filter((c) => !c.ok).length;
    return { passed: cases.length - failed, failed, cases };
  } finally {
    await pipe.close();
    loraDir?.dispose();
  }
}

export async function runConformance(
  args: { fixtures: string; model?: string; mode: string; editFixtures?: string },
  compiler: EngineCompilerPort,
): Promise<void> {
  // The repository's edit fixtures belong with its reference fixtures (same model); another folder brings its own.
  const edits = args.editFixtures ?? (args.fixtures === DEFAULT_FIXTURES_DIR ? DEFAULT_EDIT_FIXTURES_DIR : undefined);
  const report = await conformanceReport(compiler, args.fixtures, args.model, args.mode, edits);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (report.failed > 0) process.exitCode = 1;
}
