/** PSNR and SSIM of the quality benchmark (src/shared/image-metrics.ts) against closed-form values. */
import { describe, expect, it } from 'vitest';
import { mse, psnr, ssim, ssimPlane } from '../../../src/shared/image-metrics.ts';

/** Deterministic values in [0, 1). */
function texture(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  });
}

describe('psnr', () => {
  it('is 10·log10(1/MSE) for [0, 1] data', () => {
    const a = new Float32Array(100).fill(0.5);
    const b = new Float32Array(100).fill(0.6);
    expect(mse(a, b)).toBeCloseTo(0.01, 6);
    expect(psnr(a, b)).toBeCloseTo(20, 4);
    expect(psnr(a, b, 255)).toBeCloseTo(20 + 20 * Math.log10(255), 3);
  });

  it('is infinite for identical images and falls as the error grows', () => {
    const a = texture(300, 1);
    expect(psnr(a, a)).toBe(Number.POSITIVE_INFINITY);
    const small = a.map((v, i) => v + (i % 2 ? 0.01 : -0.01));
    const large = a.map((v, i) => v + (i % 2 ? 0.1 : -0.1));
    expect(psnr(a, small)).toBeCloseTo(40, 3);
    expect(psnr(a, large)).toBeCloseTo(20, 3);
  });

  it('rejects inputs of different lengths', () => {
    expect(() => psnr(new Float32Array(3), new Float32Array(4))).toThrow(/lengths differ/);
  });
});

describe('ssim', () => {
  it('is 1 for identical images', () => {
    const a = texture(3 * 32 * 32, 7);
    expect(ssim(a, a, 3, 32, 32)).toBeCloseTo(1, 10);
  });

  it('matches the closed form on constant planes (luminance term only)', () => {
    const a = new Float32Array(16 * 16).fill(0.3);
    const b = new Float32Array(16 * 16).fill(0.5);
    const c1 = 0.01 ** 2;
    const expected = (2 * 0.3 * 0.5 + c1) / (0.3 ** 2 + 0.5 ** 2 + c1);
    expect(ssimPlane(a, b, 16, 16)).toBeCloseTo(expected, 6);
  });

  it('is symmetric, decreases with noise and is negative for an inverted texture', () => {
    const a = texture(24 * 24, 3);
    const noisy = (amp: number) => a.map((v, i) => v + amp * (texture(1, i + 99)[0]! - 0.5));
    const s1 = ssimPlane(a, noisy(0.05), 24, 24);
    const s2 = ssimPlane(a, noisy(0.3), 24, 24);
    expect(ssimPlane(noisy(0.05), a, 24, 24)).toBeCloseTo(s1, 10);
    expect(s1).toBeLessThan(1);
    expect(s2).toBeLessThan(s1);
    expect(
      ssimPlane(
        a,
        a.map((v) => 1 - v),
        24,
        24,
      ),
    ).toBeLessThan(0);
  });

  it('uses a smaller window on images smaller than 11 pixels and averages channels', () => {
    const a = texture(2 * 6 * 6, 5);
    const b = a.slice();
    b.fill(0.5, 36); // second channel flat: its SSIM differs from the first channel's 1
    const second = ssimPlane(a.subarray(36), b.subarray(36), 6, 6);
    expect(ssim(a, b, 2, 6, 6)).toBeCloseTo((1 + second) / 2, 10);
    expect(() => ssim(a, b, 3, 6, 6)).toThrow(/expected 3×6×6/);
  });
});
