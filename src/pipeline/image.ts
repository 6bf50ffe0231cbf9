/**
 * @file The VAE's float output → 8-bit RGB, quantised exactly as diffusers' `VaeImageProcessor` does. Encoding the
 * pixels to image files (PNG, WebP, JPEG) is the service's job (`src/service/media/image-codec.ts`).
 */
import type { RgbImage } from './executor.ts';

/** An image, format or parameter that cannot be encoded; `param` names the culprit. */
export class ImageEncodeError extends Error {
  readonly param: string;

  constructor(message: string, param: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'ImageEncodeError';
    this.param = param;
  }
}

/** Throws unless `value` is a positive integer; `param` names it. */
export function checkDimension(value: number, param: string): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new ImageEncodeError(`${param} must be a positive integer, got ${value}`, param);
  }
}

/**
 * numpy's `round`: to nearest, ties to even (banker's rounding), unlike `Math.round` which sends ties up.
 * Only called on values in [0, 255].
 */
function roundHalfEven(v: number): number {
  const floor = Math.floor(v);
  const diff = v - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * Quantises one sample of the decoded image `[B, 3, H, W]` (NCHW float, values meant to lie in [0, 1]) into an
 * {@link RgbImage}, bit-exactly as diffusers' `VaeImageProcessor.postprocess(..., output_type="pil")`:
 * clamp to [0, 1], `(x * 255).round().astype("uint8")`. The product is taken in float32 (as numpy does on a
 * float32 array) and rounded half to even; NaN becomes 0.
 * @throws ImageEncodeError for bad sizes or an index outside the batch.
 */
export function floatImageToRgb(nchw: Float32Array, batchIndex: number, height: number, width: number): RgbImage {
  if (!(nchw instanceof Float32Array)) throw new ImageEncodeError('nchw must be a Float32Array', 'nchw');
  checkDimension(height, 'height');
  checkDimension(width, 'width');
  const plane = height * width;
  const sampleSize = 3 * plane; // [3, H, W]
  if (nchw.length % sampleSize !== 0) {
    throw new ImageEncodeError(`nchw length ${nchw.length} is not a multiple of 3*${height}*${width}`, 'nchw');
  }
  const batch = nchw.length / sampleSize;
  if (!Number.isInteger(batchIndex) || batchIndex < 0 || batchIndex >= batch) {
    throw new ImageEncodeError(`batchIndex must be an integer in 0…${batch - 1}, got ${batchIndex}`, 'batchIndex');
  }

  const data = new Uint8Array(sampleSize); // [H, W, 3]
  const base = batchIndex * sampleSize;
  for (let c = 0; c < 3; c++) {
    const src = base + c * plane;
    for (let p = 0; p < plane; p++) {
      const x = nchw[src + p] as number;
      // `x >= 0` is false for NaN, so NaN lands on 0 as well.
      const clamped = x >= 0 ? Math.min(x, 1) : 0;
      // float32 × 255 is exact in float64 (≤ 32 significant bits); fround gives numpy's float32 product.
      data[p * 3 + c] = roundHalfEven(Math.fround(clamped * 255));
    }
  }
  return { width, height, data };
}
