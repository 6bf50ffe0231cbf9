/**
 * @file The control input of BFL Control LoRAs (FLUX.1-Canny/Depth-dev-lora, docs/FLUX_SPEC.md §7.6), as diffusers'
 * `FluxControlPipeline` builds it:
 *
 *   control image (RGB, any size) → resize to the output W×H → [0, 1] → [−1, 1], NCHW [1, 3, H, W]
 *   → VAE encoder → moments (mean, log-variance) [1, 16, H/8, W/8]
 *   → z = mean + exp(logvar / 2)·ε, ε drawn from the request's generator (`latent_dist.sample(generator)`)
 *   → (z − shift)·scaling → packed like the latents [L, 64]
 *
 * and each transformer step reads `concat(latents, control)` on the feature axis, `[B, L, 128]`.
 *
 * Sampling, not the mean: diffusers samples the control latent with the pipeline's generator *before* it draws the
 * starting noise from the same generator. With the port of torch's CPU generator (`noise.ts`) this is reproducible
 * exactly, so we do the same: for a seeded request, ε is the first `16·h·w` normals of `manual_seed(seed)` and the
 * starting noise the next `16·h·w`. It is as deterministic as the mean would be, and the latents match diffusers'
 * (batch of one, or a list of per-sample generators) up to float rounding when the control image already has the
 * output size. A resize is the one inexact step: sharp's Lanczos-3 stands in for PIL's `Image.LANCZOS`.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import sharp from 'sharp';
import type { Session } from '../../runtime/index.ts';
import type { RgbImage } from '../executor.ts';
import { LoraError } from '../lora/errors.ts';
import type { ActiveLora } from '../lora/feeds.ts';
import { FluxArgumentError, type LatentGrid, packLatents } from './latents.ts';
import { TorchCpuGenerator } from './noise.ts';

const f32 = Math.fround;

/** Why a control image was refused (`ControlImageError.code`). */
export type ControlImageErrorCode =
  /** The LoRA set holds a BFL Control LoRA but the request has no control image. */
  | 'missing'
  /** A control image, but no BFL Control LoRA in the LoRA set. */
  | 'unexpected'
  /** Not a decodable image, or a malformed RGB buffer. */
  | 'invalid_image'
  /** Neither an http(s) URL, a data URL nor base64 (see `src/service/media/control-image.ts`). */
  | 'invalid_input'
  /** A URL scheme other than http and https. */
  | 'unsupported_url'
  /** The URL's host is (or resolves to) a loopback, private, link-local or other non-public address (SSRF guard). */
  | 'forbidden_url'
  /** The URL could not be fetched (network error, HTTP error status, redirect elsewhere). */
  | 'fetch_failed'
  /** More bytes or pixels than allowed. */
  | 'too_large'
  /** The fetch took longer than allowed. */
  | 'timeout';

/** A control image that cannot be used; `param` is the request field (`controlImage` unless told otherwise). */
export class ControlImageError extends FluxArgumentError {
  override name = 'ControlImageError';
  constructor(
    readonly code: ControlImageErrorCode,
    message: string,
    param = 'controlImage',
  ) {
    super(param, message);
  }
}

/** Throws unless `img` is a well-formed {@link RgbImage}. */
export function checkRgbImage(img: RgbImage | undefined): asserts img is RgbImage {
  if (!img || typeof img !== 'object') throw new ControlImageError('invalid_image', 'must be an RGB image');
  const { width, height, data } = img;
  if (!Number.isInteger(width) || width < 1 || !Number.isInteger(height) || height < 1) {
    throw new ControlImageError('invalid_image', `width and height must be positive integers, got ${width}×${height}`);
  }
  if (!(data instanceof Uint8Array) || data.length !== width * height * 3) {
    throw new ControlImageError(
      'invalid_image',
      `data must be a Uint8Array of width·height·3 = ${width * height * 3} bytes, got ${data?.length ?? typeof data}`,
    );
  }
}

/**
 * The encoder input for a control image: resized (when its size differs) to `width × height` with Lanczos-3, then
 * `2·(v/255) − 1` in float32 as diffusers' `VaeImageProcessor.preprocess` computes it. Returns NCHW `[1, 3, H, W]`.
 * @throws ControlImageError for a malformed image.
 */
export async function controlPixels(img: RgbImage, height: number, width: number): Promise<Float32Array> {
  checkRgbImage(img);
  let rgb = img.data; // [h, w, 3]
  if (img.width !== width || img.height !== height) {
    // PIL returns a copy when the size already matches; only a real resize goes through sharp.
    const raw = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
    rgb = await sharp(raw, { raw: { width: img.width, height: img.height, channels: 3 } })
      .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
      .raw()
      .toBuffer();
  }
  const plane = height * width;
  const out = new Float32Array(3 * plane); // [1, 3, H, W]
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) out[c * plane + p] = f32(2 * f32(rgb[p * 3 + c]! / 255) - 1);
  }
  return out;
}

/**
 * The packed control latents `[L, 4C]` from the encoder's moments `[1, C, h, w]`:
 * `((mean + exp(logvar/2)·ε) − shift)·scaling`, every operation in float32 as torch does. With `eps` absent the
 * mean is used (the distribution's mode).
 */
export function controlLatents(
  mean: Float32Array,
  logvar: Float32Array,
  eps: Float32Array | undefined,
  c: number,
  h: number,
  w: number,
  scaling: number,
  shift: number,
): Float32Array {
  const n = c * h * w;
  for (const [name, a] of [
    ['mean', mean],
    ['logvar', logvar],
    ['eps', eps],
  ] as const) {
    if (a && a.length !== n) throw new FluxArgumentError(name, `expected ${n} values ([1, ${c}, ${h}, ${w}])`);
  }
  const s = f32(scaling);
  const t = f32(shift);
  const z = new Float32Array(n); // [1, C, h, w]
  for (let i = 0; i < n; i++) {
    const sample = eps ? f32(mean[i]! + f32(f32(Math.exp(f32(0.5 * logvar[i]!))) * eps[i]!)) : mean[i]!;
    z[i] = f32(f32(sample - t) * s);
  }
  return packLatents(z, 1, c, h, w);
}

/** `concat(a, b)` on the feature axis: `[L, ca]` + `[L, cb]` → `[L, ca + cb]` (the control engine's hidden states). */
export function concatFeatures(a: Float32Array, b: Float32Array, tokens: number): Float32Array {
  const ca = a.length / tokens;
  const cb = b.length / tokens;
  if (!Number.isInteger(ca) || !Number.isInteger(cb)) {
    throw new FluxArgumentError('tokens', `${a.length} and ${b.length} values are not both multiples of ${tokens}`);
  }
  const out = new Float32Array(tokens * (ca + cb));
  for (let l = 0; l < tokens; l++) {
    out.set(a.subarray(l * ca, (l + 1) * ca), l * (ca + cb));
    out.set(b.subarray(l * cb, (l + 1) * cb), l * (ca + cb) + ca);
  }
  return out;
}

/**
 * The VAE encoder ONNX file of a control engine (`components.vae_encoder` of its manifest, which the runtime's
 * manifest schema does not list because only control engines have it).
 * @throws Error when the engine was compiled without it.
 */
export function vaeEncoderPath(manifestPath: string): string {
  const raw = JSON.parse(readFileSync(manifestPath, 'utf8')) as { components?: { vae_encoder?: { file?: unknown } } };
  const file = raw.components?.vae_encoder?.file;
  if (typeof file !== 'string') throw new Error(`engine ${manifestPath} has no vae_encoder component`);
  return resolve(dirname(manifestPath), file);
}

/**
 * Extra `hidden_states` channels a LoRA set needs: 0, or the model's own `in_channels` (64) when it holds a BFL
 * Control LoRA, whose `x_embedder` reads `[latents (64); control latents (64)]`.
 * @throws LoraError (`unsupported`) for a widened input that a control image cannot fill.
 */
export function controlChannelsOf(set: readonly ActiveLora[], baseInChannels: number): number {
  let widest = baseInChannels;
  for (const { name, lora } of set) {
    if (lora.inChannels === baseInChannels) continue;
    if (lora.inChannels !== 2 * baseInChannels) {
      throw new LoraError(
        'unsupported',
        `needs a ${lora.inChannels}-channel input; a control image supplies ${baseInChannels} more than the latents' ${baseInChannels}`,
        name,
      );
    }
    widest = lora.inChannels;
  }
  return widest - baseInChannels;
}

/**
 * Checks that a request has a control image exactly when its LoRA set needs one.
 * @throws ControlImageError (`param: 'controlImage'`).
 */
export function checkControlRequest(controlImage: RgbImage | undefined, controlChannels: number): void {
  if (controlChannels > 0 && controlImage === undefined) {
    throw new ControlImageError('missing', 'the LoRA set holds a BFL Control LoRA, which needs a control image');
  }
  if (controlChannels === 0 && controlImage !== undefined) {
    throw new ControlImageError(
      'unexpected',
      'a control image needs a BFL Control LoRA (e.g. FLUX.1-Canny-dev-lora) in the LoRA set',
    );
  }
  if (controlImage !== undefined) checkRgbImage(controlImage);
}

/** What {@link prepareControlSample} needs besides the request. */
export interface ControlSampleInput {
  image: RgbImage;
  seed: number;
  grid: LatentGrid;
  /** The control engine's VAE encoder (inputs `image`, outputs `latent_mean`, `latent_logvar`). */
  encoder: Session;
  latentChannels: number;
  vaeScaleFactor: number;
  scalingFactor: number;
  shiftFactor: number;
  /** Explicit packed starting noise `[L, 4C]`; when absent it is drawn after ε from the same generator. */
  latents?: Float32Array;
}

/**
 * The packed control latents `[L, 4C]` and the starting latents `[L, 4C]` of one seeded sample, in diffusers'
 * generator order (see the file header).
 */
export async function prepareControlSample(
  input: ControlSampleInput,
): Promise<{ control: Float32Array; latents: Float32Array }> {
  const { grid, latentChannels: c } = input;
  const height = grid.h * input.vaeScaleFactor;
  const width = grid.w * input.vaeScaleFactor;
  const pixels = await controlPixels(input.image, height, width); // [1, 3, H, W]
  const out = await input.encoder.run({ image: { data: pixels, dims: [1, 3, height, width] } });
  const mean = out.latent_mean?.data as Float32Array | undefined; // [1, C, h, w]
  const logvar = out.latent_logvar?.data as Float32Array | undefined;
  if (!mean || !logvar) throw new Error('vae_encoder must output latent_mean and latent_logvar');
  const gen = new TorchCpuGenerator(input.seed);
  const n = c * grid.h * grid.w;
  const eps = gen.randn(n); // drawn first, as `latent_dist.sample(generator)` runs before `prepare_latents`
  const control = controlLatents(mean, logvar, eps, c, grid.h, grid.w, input.scalingFactor, input.shiftFactor);
  const latents = input.latents ?? packLatents(gen.randn(n), 1, c, grid.h, grid.w);
  return { control, latents };
}
