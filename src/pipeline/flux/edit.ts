/**
 * @file Image editing on the FLUX pipeline, as diffusers' FluxImg2ImgPipeline and FluxInpaintPipeline compute it:
 *
 *   image (RGB) → resize to W×H → [−1, 1] NCHW [1, 3, H, W] → VAE encoder → (mean, logvar) [1, 16, H/8, W/8]
 *   → x0 = ((mean + exp(logvar/2)·ε) − shift)·scaling, packed [L, 64]          (ε: the request's generator, first)
 *   → schedule cut: init = min(steps·strength, steps), t_start = int(max(steps − init, 0)); run timesteps[t_start:]
 *   → start latents = σ₀·noise + (1 − σ₀)·x0                                   (noise: the same generator, second)
 *
 * Inpainting adds a mask (1 = repaint): binarized at 0.5, sampled to the latent grid (nearest), packed like the
 * latents [L, 64]; after every step but the last, latents = (1 − m)·(σ_next·noise + (1 − σ_next)·x0) + m·latents
 * (after the last step the re-noised image is x0 itself).
 *
 * One torch generator for a batch (diffusers' single `generator=`) draws ε for the whole batch, then the noise for
 * the whole batch: {@link SampleRequest.sharedGenerator} places a sample in such a batch. Because each sample's
 * share is a multiple of 16 values, torch's per-16 Box–Muller blocks never straddle samples, so slicing one long
 * draw equals what diffusers computes.
 */
import sharp from 'sharp';
import type { Session } from '../../runtime/index.ts';
import type { RgbImage, SampleRequest } from '../executor.ts';
import { ControlImageError, checkRgbImage, controlLatents, controlPixels } from './control.ts';
import { FluxArgumentError, type LatentGrid, packLatents } from './latents.ts';
import { TorchCpuGenerator } from './noise.ts';

const f32 = Math.fround;

/** diffusers' default `strength` of FluxImg2ImgPipeline / FluxInpaintPipeline. */
export const DEFAULT_STRENGTH = 0.6;

/** The first schedule index run for `strength` (diffusers' `get_timesteps`). */
export function editStartIndex(steps: number, strength: number): number {
  const init = Math.min(steps * strength, steps);
  return Math.trunc(Math.max(steps - init, 0));
}

/** Steps an edit runs: the schedule from {@link editStartIndex} on. */
export function editStepsRun(steps: number, strength: number): number {
  return steps - editStartIndex(steps, strength);
}

/**
 * Checks the editing fields of a request (image, mask, strength, negative prompt, true-CFG scale).
 * @throws FluxArgumentError / ControlImageError naming the field
 */
export function checkEditRequest(r: SampleRequest): void {
  if (r.strength !== undefined) {
    if (r.image === undefined) throw new FluxArgumentError('strength', 'needs an input image');
    if (!Number.isFinite(r.strength) || r.strength < 0 || r.strength > 1) {
      throw new FluxArgumentError('strength', `must be in [0, 1], got ${r.strength}`);
    }
  }
  if (r.image !== undefined) {
    try {
      checkRgbImage(r.image);
    } catch (err) {
      if (err instanceof ControlImageError) throw new ControlImageError(err.code, err.message, 'image');
      throw err;
    }
    if (r.controlImage !== undefined) throw new FluxArgumentError('image', 'cannot be combined with a control image');
    const start = editStartIndex(r.steps, r.strength ?? DEFAULT_STRENGTH);
    if (start >= r.steps) {
      throw new FluxArgumentError('strength', `${r.strength} leaves no step of ${r.steps} to run; raise it`);
    }
  }
  if (r.mask !== undefined) {
    if (r.image === undefined) throw new FluxArgumentError('mask', 'needs an input image');
    try {
      checkRgbImage(r.mask);
    } catch (err) {
      if (err instanceof ControlImageError) throw new ControlImageError(err.code, err.message, 'mask');
      throw err;
    }
    if (r.mask.width !== r.image.width || r.mask.height !== r.image.height) {
      throw new FluxArgumentError(
        'mask',
        `is ${r.mask.width}×${r.mask.height} but the image is ${r.image.width}×${r.image.height}`,
      );
    }
  }
  if (r.trueCfgScale !== undefined && (!Number.isFinite(r.trueCfgScale) || r.trueCfgScale < 0)) {
    throw new FluxArgumentError('trueCfgScale', `must be a finite number ≥ 0, got ${r.trueCfgScale}`);
  }
  if (r.negativePrompt !== undefined && typeof r.negativePrompt !== 'string') {
    throw new FluxArgumentError('negativePrompt', 'must be a string');
  }
  const g = r.sharedGenerator;
  if (g !== undefined) {
    if (!Number.isInteger(g.batch) || g.batch < 1 || !Number.isInteger(g.index) || g.index < 0 || g.index >= g.batch) {
      throw new FluxArgumentError('sharedGenerator', `index ${g.index} must lie in a batch of ${g.batch}`);
    }
  }
}

/** True when the request runs the negative branch (diffusers: `true_cfg_scale > 1` and a negative prompt). */
export function usesTrueCfg(r: SampleRequest): boolean {
  return r.negativePrompt !== undefined && (r.trueCfgScale ?? 1) > 1;
}

/**
 * The packed repaint mask `[L, 4C]` of an RGB mask image: grayscale as PIL's `L` conversion, resized to `W × H`
 * (Lanczos-3) when its size differs, binarized at 0.5, sampled to the latent grid with nearest interpolation
 * (`F.interpolate(mask, size=(h, w))`: pixel ⌊y·H/h⌋, ⌊x·W/w⌋), repeated over the C channels and packed.
 */
export async function maskLatents(
  mask: RgbImage,
  height: number,
  width: number,
  grid: LatentGrid,
  c: number,
): Promise<Float32Array> {
  const gray = new Uint8Array(mask.width * mask.height);
  for (let p = 0; p < gray.length; p++) {
    const d = mask.data;
    gray[p] = (d[p * 3]! * 19595 + d[p * 3 + 1]! * 38470 + d[p * 3 + 2]! * 7471 + 0x8000) >> 16;
  }
  let g: Uint8Array = gray;
  if (mask.width !== width || mask.height !== height) {
    g = await sharp(Buffer.from(gray), { raw: { width: mask.width, height: mask.height, channels: 1 } })
      .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
      .extractChannel(0)
      .raw()
      .toBuffer();
  }
  const { h, w } = grid;
  const plane = new Float32Array(h * w); // [h, w]
  for (let y = 0; y < h; y++) {
    const sy = Math.floor((y * height) / h);
    for (let x = 0; x < w; x++) {
      const sx = Math.floor((x * width) / w);
      plane[y * w + x] = g[sy * width + sx]! / 255 >= 0.5 ? 1 : 0;
    }
  }
  const full = new Float32Array(c * h * w); // [1, C, h, w]
  for (let ch = 0; ch < c; ch++) full.set(plane, ch * h * w);
  return packLatents(full, 1, c, h, w);
}

/** `σ·noise + (1 − σ)·x0` in float32, as `FlowMatchEulerDiscreteScheduler.scale_noise` computes it. */
export function scaleNoise(
  x0: Float32Array,
  noise: Float32Array,
  sigma: number,
  out = new Float32Array(x0.length),
): Float32Array {
  const s = f32(sigma);
  const keep = f32(1 - s);
  for (let i = 0; i < x0.length; i++) out[i] = f32(f32(s * noise[i]!) + f32(keep * x0[i]!));
  return out;
}

/** The fixed per-sample data of an edit: the image latents, the noise and (inpainting) the packed mask, `[L, 64]`. */
export interface EditState {
  imageLatents: Float32Array;
  noise: Float32Array;
  mask?: Float32Array;
}

/**
 * A VAE encoder that samples itself (the CUDA engine's `encode`): pixels NCHW `[1, 3, H, W]` in [−1, 1] and the
 * posterior's normals `eps` `[1, C, h, w]` → the packed image latents `[L, 4C]`, `((mean + exp(logvar/2)·eps) −
 * shift)·scaling` as {@link controlLatents} computes them.
 */
export type SamplingImageEncoder = (
  pixels: Float32Array,
  eps: Float32Array,
  height: number,
  width: number,
) => Promise<Float32Array>;

/** What {@link prepareEditSample} needs besides the request. */
export interface EditSampleInput {
  request: SampleRequest;
  grid: LatentGrid;
  /** The ONNX `vae_encoder` session (moments out), or an encoder that samples itself. */
  encoder: Session | SamplingImageEncoder;
  latentChannels: number;
  vaeScaleFactor: number;
  scalingFactor: number;
  shiftFactor: number;
  /** σ of the first step run. */
  sigma0: number;
}

/** The starting latents and the {@link EditState} of one img2img / inpainting sample (see the file header). */
export async function prepareEditSample(input: EditSampleInput): Promise<{ latents: Float32Array; edit: EditState }> {
  const { request: r, grid, latentChannels: c } = input;
  const height = grid.h * input.vaeScaleFactor;
  const width = grid.w * input.vaeScaleFactor;
  let pixels: Float32Array;
  try {
    pixels = await controlPixels(r.image!, height, width); // [1, 3, H, W]
  } catch (err) {
    if (err instanceof ControlImageError) throw new ControlImageError(err.code, err.message, 'image');
    throw err;
  }
  const n = c * grid.h * grid.w;
  const { index, batch } = r.sharedGenerator ?? { index: 0, batch: 1 };
  const gen = new TorchCpuGenerator(r.seed);
  // ε of the whole batch first (`latent_dist.sample(generator)`), then the whole batch's noise (`randn_tensor`).
  const eps = gen.randn(batch * n).subarray(index * n, (index + 1) * n);
  const drawn = gen.randn(batch * n).subarray(index * n, (index + 1) * n);
  const noise = r.latents ? Float32Array.from(r.latents) : packLatents(drawn, 1, c, grid.h, grid.w);
  let imageLatents: Float32Array;
  if (typeof input.encoder === 'function') {
    imageLatents = await input.encoder(pixels, eps, height, width);
    if (imageLatents.length !== n) throw new Error(`the image encoder gave ${imageLatents.length} values, not ${n}`);
  } else {
    const out = await input.encoder.run({ image: { data: pixels, dims: [1, 3, height, width] } });
    const mean = out.latent_mean?.data as Float32Array | undefined; // [1, C, h, w]
    const logvar = out.latent_logvar?.data as Float32Array | undefined;
    if (!mean || !logvar) throw new Error('vae_encoder must output latent_mean and latent_logvar');
    imageLatents = controlLatents(mean, logvar, eps, c, grid.h, grid.w, input.scalingFactor, input.shiftFactor);
  }
  const mask = r.mask ? await maskLatents(r.mask, height, width, grid, c) : undefined;
  return {
    latents: scaleNoise(imageLatents, noise, input.sigma0),
    edit: { imageLatents, noise, ...(mask ? { mask } : {}) },
  };
}

/**
 * Inpainting after a step: keeps the unmasked region on the image, re-noised to `sigmaNext` (`undefined` after the
 * last step: the clean image latents). Updates `latents` in place.
 */
export function blendInpaint(latents: Float32Array, edit: EditState, sigmaNext: number | undefined): void {
  const mask = edit.mask;
  if (!mask) return;
  const proper = sigmaNext === undefined ? edit.imageLatents : scaleNoise(edit.imageLatents, edit.noise, sigmaNext);
  for (let i = 0; i < latents.length; i++) {
    const m = mask[i]!;
    latents[i] = f32(f32(f32(1 - m) * proper[i]!) + f32(m * latents[i]!));
  }
}

/** `neg + scale·(pos − neg)` in float32 (diffusers' true CFG), written into `pos`. */
export function trueCfgCombine(pos: Float32Array, neg: Float32Array, scale: number): void {
  const s = f32(scale);
  for (let i = 0; i < pos.length; i++) pos[i] = f32(neg[i]! + f32(s * f32(pos[i]! - neg[i]!)));
}
