/**
 * @file Decoded pixels → bytes: quantising the VAE's float output to 8-bit RGB exactly as diffusers'
 * `VaeImageProcessor` does, and encoding an {@link RgbImage} to PNG, WebP or JPEG with `sharp`.
 */
import sharp from 'sharp';
import type { RgbImage } from './executor.ts';

/** Output formats the server can encode. */
export const IMAGE_FORMATS = ['png', 'webp', 'jpeg'] as const;
/** One of {@link IMAGE_FORMATS}. */
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

/** How to encode an image. */
export interface EncodeImageOptions {
  format: ImageFormat;
  /** Lossy quality 1–100 for `webp` and `jpeg`; ignored by lossless `png`. @default sharp's (80) */
  quality?: number;
}

/** An image, format or parameter that cannot be encoded; `param` names the culprit. */
export class ImageEncodeError extends Error {
  readonly param: string;

  constructor(message: string, param: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'ImageEncodeError';
    this.param = param;
  }
}

const CONTENT_TYPES: Record<ImageFormat, string> = { png: 'image/png', webp: 'image/webp', jpeg: 'image/jpeg' };
const EXTENSIONS: Record<ImageFormat, string> = { png: 'png', webp: 'webp', jpeg: 'jpg' };

/** Type guard: is `value` one of {@link IMAGE_FORMATS}? */
export function isImageFormat(value: unknown): value is ImageFormat {
  return typeof value === 'string' && (IMAGE_FORMATS as readonly string[]).includes(value);
}

function checkFormat(format: unknown): ImageFormat {
  if (!isImageFormat(format)) {
    throw new ImageEncodeError(
      `format must be one of ${IMAGE_FORMATS.join(', ')}, got ${JSON.stringify(format)}`,
      'format',
    );
  }
  return format;
}

/** MIME type of a format, e.g. `image/png`. */
export function contentTypeOf(format: ImageFormat): string {
  return CONTENT_TYPES[checkFormat(format)];
}

/** File extension of a format without the dot, e.g. `png`, `jpg`. */
export function extensionOf(format: ImageFormat): string {
  return EXTENSIONS[checkFormat(format)];
}

function checkDimension(value: number, param: string): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new ImageEncodeError(`${param} must be a positive integer, got ${value}`, param);
  }
}

/**
 * Encodes interleaved 8-bit RGB to image file bytes.
 * @throws ImageEncodeError for a bad format, quality, size or pixel buffer.
 */
export async function encodeImage(img: RgbImage, options: EncodeImageOptions): Promise<Buffer> {
  const format = checkFormat(options?.format);
  checkDimension(img.width, 'img.width');
  checkDimension(img.height, 'img.height');
  const expected = img.width * img.height * 3; // [H, W, 3]
  if (!(img.data instanceof Uint8Array) || img.data.length !== expected) {
    throw new ImageEncodeError(
      `img.data must be a Uint8Array of width*height*3 = ${expected} bytes, got ${img.data?.length ?? typeof img.data}`,
      'img.data',
    );
  }
  const { quality } = options;
  if (quality !== undefined && (!Number.isInteger(quality) || quality < 1 || quality > 100)) {
    throw new ImageEncodeError(`quality must be an integer in 1…100, got ${quality}`, 'quality');
  }

  // A view, not a copy: sharp reads the raw pixels once.
  const raw = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  const pipeline = sharp(raw, { raw: { width: img.width, height: img.height, channels: 3 } });
  switch (format) {
    case 'png':
      return pipeline.png().toBuffer();
    case 'webp':
      return pipeline.webp(quality === undefined ? {} : { quality }).toBuffer();
    case 'jpeg':
      return pipeline.jpeg(quality === undefined ? {} : { quality }).toBuffer();
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
