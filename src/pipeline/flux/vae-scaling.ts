/**
 * @file The latent ↔ VAE boundary of FLUX (docs/FLUX_SPEC.md §3.4): packed transformer latents to the VAE decoder's input
 * `z = unpack(latents) / scaling + shift`, and the decoder's `[-1, 1]` output to `[0, 1]` and to 8-bit RGB, with
 * diffusers' float32 rounding and numpy's round-half-to-even.
 */
import type { RgbImage } from '../executor.ts';
import { checkDim, checkLength, FluxArgumentError, unpackLatents } from './latents.ts';

const f32 = Math.fround;

/** FLUX.1-dev's VAE `scaling_factor`. */
export const FLUX_VAE_SCALING = 0.3611;
/** FLUX.1-dev's VAE `shift_factor`. */
export const FLUX_VAE_SHIFT = 0.1159;

/**
 * The VAE decoder input for packed latents: `[B, (h/2)·(w/2), 4C]` → NCHW `[B, C, h, w]`, `z / scaling + shift`.
 * `C` follows from the length (16 for FLUX). torch divides by the float32 scalar, then adds the float32 shift.
 * @param h latent rows (`H/8`), even. @param w latent columns (`W/8`), even.
 * @returns a new array.
 */
export function latentsForDecode(
  packed: Float32Array,
  b: number,
  h: number,
  w: number,
  scaling: number = FLUX_VAE_SCALING,
  shift: number = FLUX_VAE_SHIFT,
): Float32Array {
  checkDim('b', b);
  checkDim('h', h, true);
  checkDim('w', w, true);
  const c = packed.length / (b * h * w);
  if (!Number.isInteger(c) || c < 1) {
    throw new FluxArgumentError('packed', `length ${packed.length} is not B·h·w·C for B=${b}, h=${h}, w=${w}`);
  }
  if (!(scaling > 0) || !Number.isFinite(scaling)) {
    throw new FluxArgumentError('scaling', `must be > 0, got ${scaling}`);
  }
  if (!Number.isFinite(shift)) throw new FluxArgumentError('shift', `must be finite, got ${shift}`);
  const z = unpackLatents(packed, b, c, h, w); // [B, C, h, w]
  const s = f32(scaling);
  const t = f32(shift);
  for (let i = 0; i < z.length; i++) z[i] = f32(z[i]! / s) + t;
  return z;
}

/**
 * Maps decoded pixels from `[-1, 1]` to `[0, 1]`: `clamp(x·0.5 + 0.5, 0, 1)` in float32, any layout.
 * @returns a new array.
 */
export function postprocessDecoded(decoded: Float32Array): Float32Array {
  const out = new Float32Array(decoded.length);
  for (let i = 0; i < decoded.length; i++) {
    const v = f32(f32(decoded[i]! * 0.5) + 0.5);
    out[i] = Math.min(1, Math.max(0, v));
  }
  return out;
}

/** numpy's `round` (half to even) for the non-negative values used here. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * NCHW images in `[0, 1]` (`[B, 3, H, W]`, e.g. from {@link postprocessDecoded}) to one interleaved RGB image each,
 * as diffusers' `numpy_to_pil`: `round(x·255)` in float32, half to even.
 */
export function toRgbImages(images01: Float32Array, b: number, height: number, width: number): RgbImage[] {
  checkDim('b', b);
  checkDim('height', height);
  checkDim('width', width);
  checkLength('images01', images01, b * 3 * height * width, `[${b}, 3, ${height}, ${width}]`);
  const plane = height * width;
  const out: RgbImage[] = [];
  for (let bi = 0; bi < b; bi++) {
    const data = new Uint8Array(plane * 3); // [H, W, 3]
    const base = bi * 3 * plane;
    for (let p = 0; p < plane; p++) {
      for (let ch = 0; ch < 3; ch++) {
        const v = roundHalfEven(f32(images01[base + ch * plane + p]! * 255));
        data[p * 3 + ch] = Math.min(255, Math.max(0, v));
      }
    }
    out.push({ width, height, data });
  }
  return out;
}
