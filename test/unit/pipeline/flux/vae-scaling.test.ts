import { describe, expect, it } from 'vitest';
import { packLatents } from '../../../../src/pipeline/flux/latents.ts';
import {
  FLUX_VAE_SCALING,
  FLUX_VAE_SHIFT,
  latentsForDecode,
  postprocessDecoded,
  toRgbImages,
} from '../../../../src/pipeline/flux/vae-scaling.ts';

describe('latentsForDecode', () => {
  it('unpacks to NCHW and applies z / scaling + shift in float32', () => {
    const [b, c, h, w] = [2, 16, 4, 6];
    const nchw = new Float32Array(b * c * h * w).map((_, i) => Math.sin(i) * 2);
    const z = latentsForDecode(packLatents(nchw, b, c, h, w), b, h, w);
    expect(z.length).toBe(nchw.length);
    const s = Math.fround(FLUX_VAE_SCALING);
    const t = Math.fround(FLUX_VAE_SHIFT);
    for (let i = 0; i < z.length; i++) {
      expect(z[i]).toBe(Math.fround(Math.fround(nchw[i]! / s) + t));
      expect(z[i]).toBeCloseTo(nchw[i]! / 0.3611 + 0.1159, 5);
    }
  });

  it('takes other scaling/shift values and infers the channel count', () => {
    const nchw = Float32Array.from([1, 2, 3, 4]); // [1, 1, 2, 2]
    const z = latentsForDecode(packLatents(nchw, 1, 1, 2, 2), 1, 2, 2, 0.5, 1);
    expect(Array.from(z)).toEqual([3, 5, 7, 9]);
  });

  it('rejects bad shapes and factors by name', () => {
    expect(() => latentsForDecode(new Float32Array(100), 1, 4, 4)).toThrow(/^packed:/);
    expect(() => latentsForDecode(new Float32Array(64), 1, 3, 4)).toThrow(/^h:/);
    expect(() => latentsForDecode(new Float32Array(64), 1, 4, 4, 0)).toThrow(/^scaling:/);
    expect(() => latentsForDecode(new Float32Array(64), 1, 4, 4, 1, Number.NaN)).toThrow(/^shift:/);
  });
});

describe('postprocessDecoded', () => {
  it('maps [-1, 1] to [0, 1] and clamps', () => {
    const out = postprocessDecoded(Float32Array.from([-1, 0, 1, -3, 2.5, 0.5]));
    expect(Array.from(out)).toEqual([0, 0.5, 1, 0, 1, 0.75]);
  });
});

describe('toRgbImages', () => {
  it('writes HWC bytes per image with round-half-even like numpy', () => {
    const x = Math.fround(126.5 / 255);
    expect(Math.fround(x * 255)).toBe(126.5);
    // [2, 3, 1, 2]: image 0 pixels (R,G,B) = (0, 0.5, 1), (x, 1, 0); image 1 all 0.2.
    const img = Float32Array.from([0, x, 0.5, 1, 1, 0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]);
    const [a, b] = toRgbImages(img, 2, 1, 2);
    expect(a!.width).toBe(2);
    expect(a!.height).toBe(1);
    expect(Array.from(a!.data)).toEqual([0, 128, 255, 126, 255, 0]);
    expect(Array.from(b!.data)).toEqual([51, 51, 51, 51, 51, 51]);
  });

  it('rejects a wrong length by name', () => {
    expect(() => toRgbImages(new Float32Array(5), 1, 1, 2)).toThrow(/^images01:/);
  });
});
