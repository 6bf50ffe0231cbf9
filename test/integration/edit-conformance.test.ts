/**
 * img2img, inpainting and true CFG on the embedded model against diffusers' FluxImg2ImgPipeline, FluxInpaintPipeline
 * and FluxPipeline(`true_cfg_scale`) (test/fixtures/flux-tiny-edit, float32): the pipeline reproduces the single torch
 * generator's draws itself (posterior sample, then the noise), so nothing but the inputs is taken from the fixtures.
 * Limits are the text-to-image ones: latents 1e-4 relative, images 2/255.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { REFERENCE_LIMITS } from '../../src/cli/conformance/cases.ts';
import { editCase, readEditIndex } from '../../src/cli/conformance/edit-cases.ts';
import type { RgbImage } from '../../src/pipeline/executor.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { MODEL_DIR, REPO_ROOT } from '../helpers/paths.ts';

const DIR = join(REPO_ROOT, 'test/fixtures/flux-tiny-edit');
const cases = readEditIndex(DIR);

const cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-edit-cache-'));
let pipe: FluxPipeline;
beforeAll(async () => {
  pipe = await FluxPipeline.fromPretrained(MODEL_DIR, { compiler: engineCompiler, cacheDir });
}, 600_000);
afterAll(async () => {
  await pipe?.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

/** Max relative error of each case, printed once all ran (the numbers of the report). */
const measured: Record<string, { latents: number; image: number }> = {};
afterAll(() => console.log('edit conformance', JSON.stringify(measured)));

describe('editing conformance against diffusers (flux-tiny, float32)', () => {
  it('holds the six cases: img2img, inpainting, true CFG, two each', () => {
    expect(cases.map((c) => c.kind).sort()).toEqual([
      'img2img',
      'img2img',
      'inpaint',
      'inpaint',
      'true_cfg',
      'true_cfg',
    ]);
  });

  // The runner of `fluxql conformance` (src/cli/conformance/edit-cases.ts), one test per case.
  for (const c of cases) {
    it(`${c.name}: every step's latents and the image match`, async () => {
      const results = await editCase(pipe, DIR, c, 'original', REFERENCE_LIMITS);
      const latents = results.filter((r) => r.name.includes('.latents_after_step_'));
      expect(latents).toHaveLength(c.steps_run);
      measured[c.name] = {
        latents: Math.max(...latents.map((r) => r.value)),
        image: results.find((r) => r.name.endsWith('.image'))?.value ?? Number.NaN,
      };
      expect(results.filter((r) => !r.ok)).toEqual([]);
      if (c.kind === 'inpaint') expect(results.map((r) => r.name)).toContain(`edit.${c.name}.mask_latents`);
    }, 600_000);
  }
});

describe('bad edit input gets a typed error naming the field', () => {
  const img = (w: number, h: number): RgbImage => ({ width: w, height: h, data: new Uint8Array(w * h * 3).fill(128) });
  const base = { prompt: 'x', height: 32, width: 32, steps: 2, seed: 1 };

  it.each([
    ['strength', 'above 1', { image: img(32, 32), strength: 1.5 }],
    ['strength', 'below 0', { image: img(32, 32), strength: -0.1 }],
    ['strength', 'leaving no step', { image: img(32, 32), strength: 0 }],
    ['mask', 'of another size than the image', { image: img(32, 32), mask: img(16, 32) }],
    ['image', 'a malformed buffer', { image: { width: 4, height: 4, data: new Uint8Array(5) } }],
    ['mask', 'without an image', { mask: img(32, 32) }],
  ] as const)('%s: %s', async (param, _what, extra) => {
    await expect(pipe.generate({ ...base, ...extra })).rejects.toMatchObject({ param });
  });

  it('resizes an image of another size to the output size (img2img)', async () => {
    const res = await pipe.generate({ ...base, image: img(48, 40), strength: 1 });
    expect(res.images[0]).toMatchObject({ width: 32, height: 32 });
  });
});
