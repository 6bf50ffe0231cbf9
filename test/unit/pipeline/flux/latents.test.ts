import { describe, expect, it } from 'vitest';
import {
  FluxArgumentError,
  InvalidSizeError,
  imageIds,
  latentGrid,
  packLatents,
  textIds,
  unpackLatents,
} from '../../../../src/pipeline/flux/latents.ts';

function randomArray(n: number, seed: number): Float32Array {
  // Small LCG so the test data is reproducible without the noise module.
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

describe('latentGrid', () => {
  it('maps pixels to the latent grid and token count', () => {
    expect(latentGrid(1024, 1024)).toEqual({ h: 128, w: 128, seqLen: 4096 });
    expect(latentGrid(96, 128)).toEqual({ h: 12, w: 16, seqLen: 48 });
    expect(latentGrid(16, 32)).toEqual({ h: 2, w: 4, seqLen: 2 });
  });

  it('rejects sizes that are not positive multiples of 16, naming the side', () => {
    expect(() => latentGrid(100, 64)).toThrow(InvalidSizeError);
    expect(() => latentGrid(100, 64)).toThrow(/^height: must be a positive multiple of 16, got 100/);
    expect(() => latentGrid(64, 8)).toThrow(/^width:/);
    expect(() => latentGrid(0, 64)).toThrow(/^height:/);
    expect(() => latentGrid(64, -16)).toThrow(/^width:/);
    expect(() => latentGrid(64.5, 64)).toThrow(/^height:/);
    try {
      latentGrid(64, 24);
    } catch (e) {
      expect(e).toBeInstanceOf(FluxArgumentError);
      expect((e as InvalidSizeError).param).toBe('width');
      expect((e as InvalidSizeError).value).toBe(24);
    }
  });

  it('honours another VAE scale', () => {
    expect(latentGrid(8, 8, 1)).toEqual({ h: 8, w: 8, seqLen: 16 });
    expect(() => latentGrid(8, 8, 0)).toThrow(/^vaeScale:/);
  });
});

describe('packLatents / unpackLatents', () => {
  it('packs a hand-checked [1, 2, 2, 4] case with feature = ch*4 + dy*2 + dx', () => {
    // Channel 0 holds 0..7, channel 1 holds 10..17, each 2 rows x 4 columns.
    const x = Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17]);
    const p = packLatents(x, 1, 2, 2, 4); // [1, 2 tokens, 8 features]
    expect(Array.from(p)).toEqual([
      // token 0 (columns 0-1): ch0 (0, 1, 4, 5), ch1 (10, 11, 14, 15)
      0, 1, 4, 5, 10, 11, 14, 15,
      // token 1 (columns 2-3)
      2, 3, 6, 7, 12, 13, 16, 17,
    ]);
  });

  it('orders tokens row-major over the (h/2) x (w/2) grid', () => {
    const c = 1;
    const h = 4;
    const w = 6;
    const x = new Float32Array(c * h * w).map((_, i) => i); // value = y*w + x
    const p = packLatents(x, 1, c, h, w);
    for (let r = 0; r < h / 2; r++) {
      for (let col = 0; col < w / 2; col++) {
        const tok = r * (w / 2) + col;
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) {
            expect(p[tok * 4 + dy * 2 + dx]).toBe((2 * r + dy) * w + 2 * col + dx);
          }
        }
      }
    }
  });

  it('round-trips random batched data exactly', () => {
    const [b, c, h, w] = [2, 16, 6, 10];
    const x = randomArray(b * c * h * w, 7);
    const p = packLatents(x, b, c, h, w);
    expect(p).not.toBe(x);
    expect(Array.from(unpackLatents(p, b, c, h, w))).toEqual(Array.from(x));
    // And the other way round: unpack then pack.
    expect(Array.from(packLatents(unpackLatents(x, b, c, h, w), b, c, h, w))).toEqual(Array.from(x));
  });

  it('keeps each batch sample in its own token block', () => {
    const [b, c, h, w] = [2, 1, 2, 2];
    const x = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(Array.from(packLatents(x, b, c, h, w))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('rejects odd grids and wrong lengths by name', () => {
    expect(() => packLatents(new Float32Array(12), 1, 1, 3, 4)).toThrow(/^h:/);
    expect(() => packLatents(new Float32Array(12), 1, 1, 4, 3)).toThrow(/^w:/);
    expect(() => packLatents(new Float32Array(15), 1, 1, 4, 4)).toThrow(/^x: expected 16 elements/);
    expect(() => unpackLatents(new Float32Array(15), 1, 1, 4, 4)).toThrow(/^packed:/);
    expect(() => unpackLatents(new Float32Array(16), 0, 1, 4, 4)).toThrow(/^b:/);
  });
});

describe('position ids', () => {
  it('imageIds is [0, r, c] in row-major token order', () => {
    const ids = imageIds(4, 6); // 2 x 3 tokens
    expect(Array.from(ids)).toEqual([0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 1, 0, 0, 1, 1, 0, 1, 2]);
    expect(imageIds(128, 128).length).toBe(4096 * 3);
    expect(() => imageIds(5, 4)).toThrow(/^h:/);
  });

  it('textIds is zeros [T, 3]', () => {
    const t = textIds(512);
    expect(t.length).toBe(1536);
    expect(t.every((v) => v === 0)).toBe(true);
    expect(() => textIds(0)).toThrow(/^t:/);
  });
});
