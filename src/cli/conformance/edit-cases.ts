/**
 * @file The editing conformance cases: img2img, inpainting and true CFG against diffusers' FluxImg2ImgPipeline,
 * FluxInpaintPipeline and FluxPipeline(`true_cfg_scale`) (a fixture folder with `edit_index.json`, as
 * `tools/fixtures/edit_fixtures.py` writes it; the repository's is test/fixtures/flux-tiny-edit). The pipeline
 * reproduces the single torch generator's draws itself (posterior sample, then the noise), so only the inputs are
 * read from the fixtures. Limits are the text-to-image ones: latents relative error, images max abs diff, and the
 * inpainting mask on the latent grid exactly.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { RgbImage } from '../../pipeline/executor.ts';
import { maskLatents } from '../../pipeline/flux/edit.ts';
import { latentGrid } from '../../pipeline/flux/latents.ts';
import type { FluxPipeline, GenerateOptions } from '../../pipeline/flux/pipeline.ts';
import { stack } from '../../pipeline/flux/sample-state.ts';
import { maxAbsDiff } from '../../shared/tensor-metrics.ts';
import { openSafetensors } from '../../shared/weights/index.ts';
import { type CaseResult, type Limits, result, trajectoryCase } from './cases.ts';

const editCaseSchema = z.object({
  kind: z.enum(['img2img', 'inpaint', 'true_cfg']),
  name: z.string(),
  prompts: z.array(z.string()).min(1),
  negative: z.array(z.string()).optional(),
  height: z.number().int(),
  width: z.number().int(),
  steps: z.number().int(),
  strength: z.number().optional(),
  true_cfg: z.number().optional(),
  guidance: z.number(),
  seed: z.number().int(),
  file: z.string(),
  /** Steps the pipeline runs (`strength` skips the start of the schedule). */
  steps_run: z.number().int(),
});

/** One case of `edit_index.json`. */
export type EditCase = z.infer<typeof editCaseSchema>;

/** Name of the index file inside an edit fixture folder. */
export const EDIT_INDEX = 'edit_index.json';

/** Reads and validates `<dir>/edit_index.json`; a malformed file fails with the field named. */
export function readEditIndex(dir: string): EditCase[] {
  const path = join(dir, EDIT_INDEX);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
  const parsed = z.object({ cases: z.array(editCaseSchema) }).safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`${path}: ${issue?.path.join('.')}: ${issue?.message}`);
  }
  return parsed.data.cases;
}

/** `[B, C, H, W]` floats holding k/255 → B interleaved 8-bit RGB images `[H, W, 3]` (a 1-channel mask is repeated). */
export function toRgb(data: Float32Array, b: number, c: number, h: number, w: number): RgbImage[] {
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

/**
 * One edit case: the packed latent mask (inpainting), the number of steps run, every step's latents and the image.
 * Results are named `edit.<case name>.<quantity>`.
 */
export async function editCase(
  pipe: FluxPipeline,
  dir: string,
  c: EditCase,
  mode: string,
  limits: Limits,
): Promise<CaseResult[]> {
  const f = openSafetensors(join(dir, c.file));
  try {
    const name = `edit.${c.name}`;
    const out: CaseResult[] = [];
    const b = c.prompts.length;
    const has = new Set(f.names());
    const images = has.has('input_image') ? toRgb(f.readF32('input_image'), b, 3, c.height, c.width) : undefined;
    const masks = has.has('input_mask') ? toRgb(f.readF32('input_mask'), b, 1, c.height, c.width) : undefined;
    if (masks) {
      // The mask on the latent grid, packed `[B, L, 64]`, as diffusers' prepare_mask_latents gives it: exact.
      const grid = latentGrid(c.height, c.width);
      const got = await Promise.all(masks.map((m) => maskLatents(m, c.height, c.width, grid, 16)));
      out.push(
        result(`${name}.mask_latents`, 'max_abs_diff', maxAbsDiff(stack(got), f.readF32('mask_latents_packed')), 0),
      );
    }
    const request: Omit<GenerateOptions, 'onStep'> = {
      prompts: c.prompts,
      height: c.height,
      width: c.width,
      steps: c.steps,
      guidanceScale: c.guidance,
      seed: c.seed,
      // diffusers drew everything from one generator for the batch.
      generator: 'shared',
      mode,
      ...(images ? { image: images, strength: c.strength } : {}),
      ...(masks ? { mask: masks } : {}),
      ...(c.negative ? { negativePrompt: c.negative, trueCfgScale: c.true_cfg } : {}),
    };
    // Steps the file does not hold are counted by steps_run.
    const { results, stepsRun } = await trajectoryCase(pipe, request, f, name, limits, true);
    out.push(result(`${name}.steps_run`, 'mismatched_values', Math.abs(stepsRun - c.steps_run), 0));
    return [...out, ...results];
  } finally {
    f.close();
  }
}

/** Every case of an edit fixture folder, in index order. */
export async function editCases(pipe: FluxPipeline, dir: string, mode: string, limits: Limits): Promise<CaseResult[]> {
  const out: CaseResult[] = [];
  for (const c of readEditIndex(dir)) out.push(...(await editCase(pipe, dir, c, mode, limits)));
  return out;
}
