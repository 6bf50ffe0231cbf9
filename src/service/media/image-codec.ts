/**
 * @file Image files on the service side: encoding an {@link RgbImage} to PNG, WebP or JPEG with `sharp`, and the
 * formats' MIME types and file extensions. The pipeline hands over pixels; bytes are made here.
 */
import sharp from 'sharp';
import { checkDimension, ImageEncodeError, type RgbImage } from '../pipeline.ts';

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
