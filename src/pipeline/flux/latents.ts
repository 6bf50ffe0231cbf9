/**
 * @file Latent geometry of FLUX (docs/FLUX_SPEC.md §3): the latent grid of an image size, 2×2 patch packing of NCHW latents
 * into transformer tokens and back, and the position ids of text and image tokens.
 *
 * Conventions: `h = H/8`, `w = W/8` is the latent grid (VAE ×8), the transformer sees `(h/2)·(w/2)` tokens of
 * `4·C` features. All tensors are flat row-major `Float32Array`s; shapes are given in comments.
 */

/** A bad argument to one of the FLUX numeric helpers; `param` names the offending parameter. */
export class FluxArgumentError extends Error {
  override name = 'FluxArgumentError';
  constructor(
    /** Name of the parameter that was rejected. */
    readonly param: string,
    message: string,
  ) {
    super(`${param}: ${message}`);
  }
}

/** An image size the pipeline cannot run: not a positive multiple of `2 × vaeScale` (16 for FLUX). */
export class InvalidSizeError extends FluxArgumentError {
  override name = 'InvalidSizeError';
  constructor(
    param: 'height' | 'width',
    /** The rejected value. */
    readonly value: number,
    /** The required multiple. */
    readonly multiple: number,
  ) {
    super(param, `must be a positive multiple of ${multiple}, got ${value}`);
  }
}

/** The latent grid of an image size. */
export interface LatentGrid {
  /** Latent rows, `height / vaeScale`. */
  h: number;
  /** Latent columns, `width / vaeScale`. */
  w: number;
  /** Number of image tokens after 2×2 packing, `(h/2)·(w/2)`. */
  seqLen: number;
}

/**
 * The latent grid of an `height × width` image.
 * @param vaeScale spatial factor of the VAE. @default 8
 * @throws InvalidSizeError when a side is not a positive multiple of `2·vaeScale` (diffusers would silently floor).
 */
export function latentGrid(height: number, width: number, vaeScale = 8): LatentGrid {
  if (!Number.isInteger(vaeScale) || vaeScale < 1) {
    throw new FluxArgumentError('vaeScale', `must be a positive integer, got ${vaeScale}`);
  }
  const multiple = 2 * vaeScale;
  if (!Number.isInteger(height) || height < multiple || height % multiple !== 0) {
    throw new InvalidSizeError('height', height, multiple);
  }
  if (!Number.isInteger(width) || width < multiple || width % multiple !== 0) {
    throw new InvalidSizeError('width', width, multiple);
  }
  const h = height / vaeScale;
  const w = width / vaeScale;
  return { h, w, seqLen: (h / 2) * (w / 2) };
}

/** Throws unless `value` is a positive integer (and even when `even`). */
export function checkDim(param: string, value: number, even = false): void {
  if (!Number.isInteger(value) || value < 1 || (even && value % 2 !== 0)) {
    throw new FluxArgumentError(param, `must be a positive ${even ? 'even ' : ''}integer, got ${value}`);
  }
}

/** Throws unless `data` holds exactly `expected` elements. */
export function checkLength(param: string, data: ArrayLike<number>, expected: number, shape: string): void {
  if (data.length !== expected) {
    throw new FluxArgumentError(param, `expected ${expected} elements (${shape}), got ${data.length}`);
  }
}

/**
 * Packs NCHW latents into transformer tokens: `[B, C, h, w]` → `[B, (h/2)·(w/2), 4C]`. Token `r·(w/2) + c` holds the
 * 2×2 patch at rows `2r..2r+1`, columns `2c..2c+1`; feature index is `ch·4 + dy·2 + dx` (docs/FLUX_SPEC.md §3.2).
 * @returns a new array.
 */
export function packLatents(x: Float32Array, b: number, c: number, h: number, w: number): Float32Array {
  checkDim('b', b);
  checkDim('c', c);
  checkDim('h', h, true);
  checkDim('w', w, true);
  checkLength('x', x, b * c * h * w, `[${b}, ${c}, ${h}, ${w}]`);
  const hh = h / 2;
  const wh = w / 2;
  const f = 4 * c;
  const out = new Float32Array(x.length);
  // View x as [B, C, h/2, 2, w/2, 2] and write it permuted to [B, h/2, w/2, C, 2, 2].
  for (let bi = 0; bi < b; bi++) {
    for (let ch = 0; ch < c; ch++) {
      const plane = (bi * c + ch) * h * w;
      for (let y = 0; y < h; y++) {
        const r = y >> 1;
        const dy = y & 1;
        const rowIn = plane + y * w;
        const rowOut = (bi * hh + r) * wh * f + ch * 4 + dy * 2;
        for (let xx = 0; xx < w; xx++) {
          out[rowOut + (xx >> 1) * f + (xx & 1)] = x[rowIn + xx]!;
        }
      }
    }
  }
  return out;
}

/**
 * Inverse of {@link packLatents}: `[B, (h/2)·(w/2), 4C]` → `[B, C, h, w]`.
 * @returns a new array.
 */
export function unpackLatents(packed: Float32Array, b: number, c: number, h: number, w: number): Float32Array {
  checkDim('b', b);
  checkDim('c', c);
  checkDim('h', h, true);
  checkDim('w', w, true);
  checkLength('packed', packed, b * c * h * w, `[${b}, ${(h / 2) * (w / 2)}, ${4 * c}]`);
  const hh = h / 2;
  const wh = w / 2;
  const f = 4 * c;
  const out = new Float32Array(packed.length);
  for (let bi = 0; bi < b; bi++) {
    for (let ch = 0; ch < c; ch++) {
      const plane = (bi * c + ch) * h * w;
      for (let y = 0; y < h; y++) {
        const rowIn = (bi * hh + (y >> 1)) * wh * f + ch * 4 + (y & 1) * 2;
        const rowOut = plane + y * w;
        for (let xx = 0; xx < w; xx++) {
          out[rowOut + xx] = packed[rowIn + (xx >> 1) * f + (xx & 1)]!;
        }
      }
    }
  }
  return out;
}

/**
 * Position ids of the image tokens of an `h × w` latent grid: `[(h/2)·(w/2), 3]`, row `r·(w/2) + c` = `[0, r, c]`
 * (axis 0 is the frame/condition index, 0 for text-to-image). Shared by every sample of a batch.
 * @param h latent rows (`H/8`), even.
 * @param w latent columns (`W/8`), even.
 */
export function imageIds(h: number, w: number): Float32Array {
  checkDim('h', h, true);
  checkDim('w', w, true);
  const hh = h / 2;
  const wh = w / 2;
  const ids = new Float32Array(hh * wh * 3); // [L, 3]
  for (let r = 0; r < hh; r++) {
    for (let c = 0; c < wh; c++) {
      const o = (r * wh + c) * 3;
      ids[o + 1] = r;
      ids[o + 2] = c;
    }
  }
  return ids;
}

/** Position ids of `t` text tokens: zeros `[T, 3]` (every text token sits at position (0,0,0)). */
export function textIds(t: number): Float32Array {
  checkDim('t', t);
  return new Float32Array(t * 3);
}
