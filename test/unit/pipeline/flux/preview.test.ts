import { describe, expect, it } from 'vitest';
import { packLatents } from '../../../../src/pipeline/flux/latents.ts';
import {
  FLUX_LATENT_RGB_BIAS,
  FLUX_LATENT_RGB_FACTORS,
  latentPreviewRgb,
} from '../../../../src/pipeline/flux/preview.ts';

const byte = (v: number) => Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255);

describe('latentPreviewRgb', () => {
  it('gives the bias colour for zero latents', () => {
    const img = latentPreviewRgb(new Float32Array(4 * 64), 4, 4);
    expect(img.width).toBe(4);
    expect(img.height).toBe(4);
    expect(img.data.length).toBe(48);
    const [r, g, b] = FLUX_LATENT_RGB_BIAS.map(byte);
    for (let p = 0; p < 16; p++) expect(Array.from(img.data.subarray(p * 3, p * 3 + 3))).toEqual([r, g, b]);
  });

  it('projects each latent cell of the unpacked grid to its own pixel', () => {
    const [c, h, w] = [16, 4, 6];
    // Channel 4 is 5 at cell (1, 3) only, channel 13 is -4 at cell (2, 0) only; everything else 0.
    const nchw = new Float32Array(c * h * w);
    nchw[4 * h * w + 1 * w + 3] = 5;
    nchw[13 * h * w + 2 * w + 0] = -4;
    const img = latentPreviewRgb(packLatents(nchw, 1, c, h, w), h, w);
    const px = (y: number, x: number) => Array.from(img.data.subarray((y * w + x) * 3, (y * w + x) * 3 + 3));
    const bias = FLUX_LATENT_RGB_BIAS;
    const k4 = FLUX_LATENT_RGB_FACTORS[4]!;
    const k13 = FLUX_LATENT_RGB_FACTORS[13]!;
    expect(px(1, 3)).toEqual([0, 1, 2].map((i) => byte(bias[i]! + 5 * k4[i]!)));
    expect(px(2, 0)).toEqual([0, 1, 2].map((i) => byte(bias[i]! - 4 * k13[i]!)));
    expect(px(0, 0)).toEqual(bias.map(byte));
    expect(px(1, 2)).toEqual(bias.map(byte));
  });

  it('clamps to bytes', () => {
    const nchw = new Float32Array(16 * 2 * 2).fill(1000);
    const img = latentPreviewRgb(packLatents(nchw, 1, 16, 2, 2), 2, 2);
    for (const v of img.data) expect(v === 0 || v === 255).toBe(true);
  });

  it('rejects bad sizes by name', () => {
    expect(() => latentPreviewRgb(new Float32Array(64), 3, 2)).toThrow(/^h:/);
    expect(() => latentPreviewRgb(new Float32Array(63), 2, 2)).toThrow(/^packed:/);
  });
});
