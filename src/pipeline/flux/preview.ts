/**
 * @file A cheap progress preview of a sample mid-denoising: each latent cell becomes one RGB pixel through a fixed
 * linear projection of its 16 channels, so an `H × W` image previews at `H/8 × W/8` with no VAE run.
 *
 * The factors are the published FLUX latent→RGB table of ComfyUI (docs/FLUX_SPEC.md §10.2), a least-squares fit
 * from FLUX's 16 latent channels (in the transformer's scaled space, before `/scaling + shift`) to RGB in roughly
 * `[-1, 1]`. The preview is mapped to bytes as ComfyUI does: `clamp((rgb + 1) / 2, 0, 1) · 255`.
 */
import type { RgbImage } from '../executor.ts';
import { checkDim, checkLength } from './latents.ts';

/** `[16][3]` latent channel → (R, G, B) weights (ComfyUI, FLUX). */
export const FLUX_LATENT_RGB_FACTORS: readonly (readonly [number, number, number])[] = Object.freeze([
  [-0.0346, 0.0244, 0.0681],
  [0.0034, 0.021, 0.0687],
  [0.0275, -0.0668, -0.0433],
  [-0.0174, 0.016, 0.0617],
  [0.0859, 0.0721, 0.0329],
  [0.0004, 0.0383, 0.0115],
  [0.0405, 0.0861, 0.0915],
  [-0.0236, -0.0185, -0.0259],
  [-0.0245, 0.025, 0.118],
  [0.1008, 0.0755, -0.0421],
  [-0.0515, 0.0201, 0.0011],
  [0.0428, -0.0012, -0.0036],
  [0.0817, 0.0765, 0.0749],
  [-0.1264, -0.0522, -0.1103],
  [-0.028, -0.0881, -0.0499],
  [-0.1262, -0.0982, -0.0778],
] as const);

/** (R, G, B) bias added after the projection (ComfyUI, FLUX). */
export const FLUX_LATENT_RGB_BIAS: readonly [number, number, number] = Object.freeze([-0.0329, -0.0718, -0.0851]);

/**
 * An `h × w` RGB preview of one sample's packed latents `[(h/2)·(w/2), 64]` (16 channels × 2×2 patch).
 * Pass `x̂0 = latents − σ·v` instead of the noisy latents for a sharper preview of where the sample is heading.
 * @param h latent rows (`H/8`), even. @param w latent columns (`W/8`), even.
 */
export function latentPreviewRgb(packed: Float32Array, h: number, w: number): RgbImage {
  checkDim('h', h, true);
  checkDim('w', w, true);
  const channels = FLUX_LATENT_RGB_FACTORS.length;
  const f = 4 * channels;
  checkLength('packed', packed, (h / 2) * (w / 2) * f, `[${(h / 2) * (w / 2)}, ${f}]`);
  const data = new Uint8Array(h * w * 3); // [h, w, 3]
  const [br, bg, bb] = FLUX_LATENT_RGB_BIAS;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      // Cell (y, x) is feature ch·4 + dy·2 + dx of token (y/2)·(w/2) + x/2 (docs/FLUX_SPEC.md §3.2).
      const base = ((y >> 1) * (w / 2) + (x >> 1)) * f + (y & 1) * 2 + (x & 1);
      let r = br;
      let g = bg;
      let b = bb;
      for (let ch = 0; ch < channels; ch++) {
        const z = packed[base + ch * 4]!;
        const k = FLUX_LATENT_RGB_FACTORS[ch]!;
        r += z * k[0];
        g += z * k[1];
        b += z * k[2];
      }
      const o = (y * w + x) * 3;
      data[o] = toByte(r);
      data[o + 1] = toByte(g);
      data[o + 2] = toByte(b);
    }
  }
  return { width: w, height: h, data };
}

function toByte(v: number): number {
  const u = (v + 1) / 2;
  return Math.round(Math.min(1, Math.max(0, u)) * 255);
}
