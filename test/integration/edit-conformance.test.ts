/**
 * img2img, inpainting and true CFG on the embedded model against diffusers' FluxImg2ImgPipeline, FluxInpaintPipeline
 * and FluxPipeline(`true_cfg_scale`) (test/fixtures/flux-tiny-edit, float32): the pipeline reproduces the single torch
 * generator's draws itself (posterior sample, then the noise), so nothing but the inputs is taken from the fixtures.
 * Limits are the text-to-image ones: latents 1e-4 relative, images 2/255.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RgbImage } from '../../src/pipeline/executor.ts';
import { maskLatents } from '../../src/pipeline/flux/edit.ts';
import { latentGrid } from '../../src/pipeline/flux/latents.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { stack } from '../../src/pipeline/flux/sample-state.ts';
import { maxAbsDiff, relativeError } from '../../src/shared/tensor-metrics.ts';
import { openSafetensors } from '../../src/shared/weights/index.ts';
import { MODEL_DIR, REPO_ROOT } from '../helpers/paths.ts';

const DIR = join(REPO_ROOT, 'test/fixtures/flux-tiny-edit');
const REL = 1e-4;
const IMAGE = 2 / 255;

interface EditCase {
  kind: 'img2img' | 'inpaint' | 'true_cfg';
  name: string;
  prompts: string[];
  negative?: string[];
  height: number;
  width: number;
  steps: number;
  strength?: number;
  true_cfg?: number;
  guidance: number;
  seed: number;
  file: string;
  steps_run: number;
}
const index = JSON.parse(readFileSync(join(DIR, 'edit_index.json'), 'utf8')) as { cases: EditCase[] };

/** `[B, C, H, W]` floats holding k/255 → B interleaved 8-bit RGB images (a 1-channel mask is repeated). */
function toRgb(data: Float32Array, b: number, c: number, h: number, w: number): RgbImage[] {
  const plane = h * w;
  return Array.from({ length: b }, (_, i) => {
    const out = new Uint8Array(plane * 3);
    for (let p = 0; p < plane; p++) {
      for (let ch = 0; ch < 3; ch++)
        out[p * 3 + ch] = Math.round(data[(i * c + (c === 1 ? 0 : ch)) * plane + p]! * 255);
    }
    return { width: w, height: h, data: out };
  });
}

const cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-edit-cache-'));
let pipe: FluxPipeline;
beforeAll(async () => {
  pipe = await FluxPipeline.fromPretrained(MODEL_DIR, { cacheDir });
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
    expect(index.cases.map((c) => c.kind).sort()).toEqual([
      'img2img',
      'img2img',
      'inpaint',
      'inpaint',
      'true_cfg',
      'true_cfg',
    ]);
  });

  for (const c of index.cases) {
    it(`${c.name}: every step's latents and the image match`, async () => {
      const f = openSafetensors(join(DIR, c.file));
      try {
        const b = c.prompts.length;
        const images = f.names().includes('input_image')
          ? toRgb(f.readF32('input_image'), b, 3, c.height, c.width)
          : undefined;
        const masks = f.names().includes('input_mask')
          ? toRgb(f.readF32('input_mask'), b, 1, c.height, c.width)
          : undefined;
        if (masks) {
          // The mask on the latent grid, packed, as diffusers' prepare_mask_latents gives it.
          const grid = latentGrid(c.height, c.width);
          const got = await Promise.all(masks.map((m) => maskLatents(m, c.height, c.width, grid, 16)));
          expect(maxAbsDiff(stack(got), f.readF32('mask_latents_packed'))).toBe(0);
        }
        const steps: Float32Array[] = [];
        const res = await pipe.generate({
          prompts: c.prompts,
          height: c.height,
          width: c.width,
          steps: c.steps,
          guidanceScale: c.guidance,
          seed: c.seed,
          generator: 'shared',
          ...(images ? { image: images, strength: c.strength } : {}),
          ...(masks ? { mask: masks } : {}),
          ...(c.negative ? { negativePrompt: c.negative, trueCfgScale: c.true_cfg } : {}),
          onStep: (_s, _t, latents) => {
            steps.push(stack(latents));
          },
        });
        expect(steps).toHaveLength(c.steps_run);
        let worst = 0;
        steps.forEach((l, i) => {
          const err = relativeError(l, f.readF32(`latents_after_step_${i}`));
          worst = Math.max(worst, err);
          expect(err, `latents_after_step_${i}`).toBeLessThanOrEqual(REL);
        });
        const imageDiff = maxAbsDiff(stack(res.floatImages), f.readF32('image'));
        measured[c.name] = { latents: worst, image: imageDiff };
        expect(imageDiff).toBeLessThanOrEqual(IMAGE);
      } finally {
        f.close();
      }
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
