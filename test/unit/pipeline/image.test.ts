/**
 * @file Quantising decoded floats to 8-bit RGB (numpy's rounding) and encoding PNG/WebP/JPEG (the service's image codec), checked by decoding
 * the bytes back with sharp.
 */
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import type { RgbImage } from '../../../src/pipeline/executor.ts';
import { floatImageToRgb, ImageEncodeError } from '../../../src/pipeline/image.ts';
import {
  contentTypeOf,
  encodeImage,
  extensionOf,
  IMAGE_FORMATS,
  isImageFormat,
} from '../../../src/service/media/image-codec.ts';
import { FIXTURES_DIR } from '../../helpers/paths.ts';
import { readSafetensorsF32 } from '../../helpers/read-safetensors.ts';

/** A deterministic image with gradients in every channel (smooth, so lossy codecs stay close). */
function gradient(width: number, height: number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      data[i] = Math.floor((x * 255) / (width - 1));
      data[i + 1] = Math.floor((y * 255) / (height - 1));
      data[i + 2] = (x + y) % 256;
    }
  }
  return { width, height, data };
}

async function decode(bytes: Buffer) {
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const meta = await sharp(bytes).metadata();
  return { data: new Uint8Array(data), info, format: meta.format };
}

const maxAbsDiff = (a: Uint8Array, b: Uint8Array): number => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
};

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('encodeImage', () => {
  const img = gradient(80, 48);

  it('encodes PNG losslessly', async () => {
    const bytes = await encodeImage(img, { format: 'png' });
    const back = await decode(bytes);
    expect(back.format).toBe('png');
    expect([back.info.width, back.info.height, back.info.channels]).toEqual([80, 48, 3]);
    expect(back.data).toEqual(img.data);
  });

  it.each(['webp', 'jpeg'] as const)('encodes %s close to the source', async (format) => {
    const bytes = await encodeImage(img, { format, quality: 95 });
    const back = await decode(bytes);
    expect(back.format).toBe(format);
    expect([back.info.width, back.info.height]).toEqual([80, 48]);
    expect(back.data.length).toBe(img.data.length);
    // Lossy, but a smooth gradient at quality 95 stays within a few levels on average.
    let sum = 0;
    for (let i = 0; i < img.data.length; i++) sum += Math.abs((back.data[i] as number) - (img.data[i] as number));
    expect(sum / img.data.length).toBeLessThan(4);
  });

  it('lower quality gives smaller lossy files', async () => {
    for (const format of ['webp', 'jpeg'] as const) {
      const hi = await encodeImage(img, { format, quality: 100 });
      const lo = await encodeImage(img, { format, quality: 10 });
      expect(lo.length).toBeLessThan(hi.length);
    }
  });

  it('encodes a view into a larger buffer (byteOffset respected)', async () => {
    const backing = new Uint8Array(img.data.length + 7);
    backing.set(img.data, 7);
    const view = { ...img, data: backing.subarray(7) };
    const back = await decode(await encodeImage(view, { format: 'png' }));
    expect(back.data).toEqual(img.data);
  });

  it('rejects bad parameters with typed errors naming them', async () => {
    const cases: [RgbImage, unknown, string][] = [
      [img, { format: 'gif' }, 'format'],
      [img, { format: 'jpeg', quality: 0 }, 'quality'],
      [img, { format: 'webp', quality: 101 }, 'quality'],
      [{ ...img, width: 0 }, { format: 'png' }, 'img.width'],
      [{ ...img, height: 2.5 }, { format: 'png' }, 'img.height'],
      [{ ...img, data: img.data.subarray(1) }, { format: 'png' }, 'img.data'],
    ];
    for (const [image, options, param] of cases) {
      const err = await encodeImage(image, options as { format: 'png' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ImageEncodeError);
      expect((err as ImageEncodeError).param).toBe(param);
    }
  });
});

describe('format helpers', () => {
  it('maps formats to content types and extensions', () => {
    expect(IMAGE_FORMATS.map(contentTypeOf)).toEqual(['image/png', 'image/webp', 'image/jpeg']);
    expect(IMAGE_FORMATS.map(extensionOf)).toEqual(['png', 'webp', 'jpg']);
    expect(isImageFormat('webp')).toBe(true);
    expect(isImageFormat('bmp')).toBe(false);
    expect(thrown(() => contentTypeOf('bmp' as 'png'))).toBeInstanceOf(ImageEncodeError);
  });
});

/** The float32 nearest (k + 0.5) / 255 whose float32 product with 255 is exactly k + 0.5, if one exists. */
function exactHalf(k: number): number | undefined {
  const target = k + 0.5;
  let x = Math.fround(target / 255);
  const buf = new Float32Array(1);
  const bits = new Int32Array(buf.buffer);
  for (let step = 0; step < 8; step++) {
    const p = Math.fround(x * 255);
    if (p === target) return x;
    buf[0] = x;
    bits[0] = (bits[0] as number) + (p < target ? 1 : -1); // move one ulp towards the target
    x = buf[0] as number;
  }
  return undefined;
}

describe('floatImageToRgb', () => {
  it('rounds exact .5 products half to even, like numpy', () => {
    const ks = [0, 1, 2, 3, 126, 127, 253, 254];
    const halves = ks.map((k) => exactHalf(k));
    expect(halves.every((x) => x !== undefined)).toBe(true);
    // Lay the values out as channel 0 of a [1, 3, 1, W] image; channels 1 and 2 are zero.
    const W = ks.length;
    const nchw = new Float32Array(3 * W);
    halves.forEach((x, i) => {
      nchw[i] = x as number;
    });
    const { data } = floatImageToRgb(nchw, 0, 1, W);
    const red = ks.map((_, i) => data[i * 3]);
    // Ties go to the even neighbour: 0.5→0, 1.5→2, 2.5→2, 3.5→4, …, 254.5→254.
    expect(red).toEqual(ks.map((k) => (k % 2 === 0 ? k : k + 1)));
    expect(red).not.toEqual(ks.map((k) => Math.round(k + 0.5)));
  });

  it('rounds non-ties to nearest and clamps out-of-range values and NaN', () => {
    const values = [-0.25, 0, 1 / 255, 0.499, 0.5, 0.501, 1, 1.75, Number.NaN, Number.POSITIVE_INFINITY];
    const nchw = new Float32Array(3 * values.length);
    nchw.set(values, values.length); // channel 1 (green)
    const { data } = floatImageToRgb(nchw, 0, 1, values.length);
    const green = values.map((_, i) => data[i * 3 + 1]);
    expect(green).toEqual([0, 0, 1, 127, 128, 128, 255, 255, 0, 255]);
  });

  it('turns NCHW planes into interleaved HWC for the chosen batch entry', () => {
    const [B, H, W] = [2, 2, 3];
    const nchw = new Float32Array(B * 3 * H * W);
    // value encodes (b, c, y, x) so every output byte says where it came from.
    for (let b = 0; b < B; b++)
      for (let c = 0; c < 3; c++)
        for (let y = 0; y < H; y++)
          for (let x = 0; x < W; x++) nchw[((b * 3 + c) * H + y) * W + x] = (b * 100 + c * 10 + y * 3 + x) / 255;
    const img = floatImageToRgb(nchw, 1, H, W);
    expect([img.width, img.height, img.data.length]).toEqual([W, H, H * W * 3]);
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++)
        for (let c = 0; c < 3; c++) expect(img.data[(y * W + x) * 3 + c]).toBe(100 + c * 10 + y * 3 + x);
  });

  it('quantises the reference decoded image within 1/255 of naive rounding and round-trips it through PNG', async () => {
    const image = readSafetensorsF32(join(FIXTURES_DIR, 'pipeline_case_1.safetensors')).image;
    expect(image).toBeDefined();
    const [B, C, H, W] = image!.shape as [number, number, number, number];
    expect(C).toBe(3);
    for (let b = 0; b < B; b++) {
      const rgb = floatImageToRgb(image!.data, b, H, W);
      const plane = H * W;
      for (let p = 0; p < plane; p += 97) {
        for (let c = 0; c < 3; c++) {
          const v = image!.data[(b * 3 + c) * plane + p] as number;
          expect(Math.abs((rgb.data[p * 3 + c] as number) - Math.min(255, Math.max(0, v * 255)))).toBeLessThanOrEqual(
            0.5,
          );
        }
      }
      const back = await decode(await encodeImage(rgb, { format: 'png' }));
      expect(maxAbsDiff(back.data, rgb.data)).toBe(0);
      expect([back.info.width, back.info.height]).toEqual([W, H]);
    }
  });

  it('rejects bad sizes and batch indices naming the parameter', () => {
    const nchw = new Float32Array(2 * 3 * 4 * 4);
    const params = [
      [() => floatImageToRgb(nchw, 2, 4, 4), 'batchIndex'],
      [() => floatImageToRgb(nchw, -1, 4, 4), 'batchIndex'],
      [() => floatImageToRgb(nchw, 0, 0, 4), 'height'],
      [() => floatImageToRgb(nchw, 0, 4, 1.5), 'width'],
      [() => floatImageToRgb(nchw, 0, 5, 4), 'nchw'],
      [() => floatImageToRgb(new Float64Array(48) as unknown as Float32Array, 0, 4, 4), 'nchw'],
    ] as const;
    for (const [fn, param] of params) {
      const err = thrown(fn);
      expect(err).toBeInstanceOf(ImageEncodeError);
      expect((err as ImageEncodeError).param).toBe(param);
    }
  });
});
