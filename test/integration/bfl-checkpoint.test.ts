/**
 * A FLUX repository in BFL's single-file form (`flux1-dev.safetensors` + `ae.safetensors` beside the diffusers text
 * encoders, as the FLUX.1-dev repo ships them) generates the same image as the diffusers folders, in F32 and BF16.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { writeBflRepo } from '../../tools/bfl-checkpoint.ts';
import { MODEL_DIR } from '../helpers/paths.ts';

const cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-bfl-cache-'));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

function bflRepo(dtype: 'F32' | 'BF16'): string {
  const dir = mkdtempSync(join(tmpdir(), 'fluxql-bfl-'));
  writeBflRepo(dir, dtype);
  return dir;
}

const request = { prompt: 'a lighthouse in a storm', height: 64, width: 64, steps: 3, seed: 4 };

async function generate(dir: string): Promise<Float32Array> {
  const pipe = await FluxPipeline.fromPretrained(dir, { compiler: engineCompiler, cacheDir });
  try {
    return (await pipe.generate(request)).floatImages[0]!;
  } finally {
    await pipe.close();
  }
}

describe('BFL single-file checkpoints', () => {
  it('match the diffusers layout exactly in F32 and closely in BF16', async () => {
    const reference = await generate(MODEL_DIR);
    const f32 = await generate(bflRepo('F32'));
    expect(Math.max(...f32.map((v, i) => Math.abs(v - reference[i]!)))).toBeLessThan(1e-5);
    const bf16 = await generate(bflRepo('BF16'));
    const diff = Math.max(...bf16.map((v, i) => Math.abs(v - reference[i]!)));
    expect(diff).toBeGreaterThan(0); // bf16 weights really were rounded
    expect(diff).toBeLessThan(0.1);
  });
});
