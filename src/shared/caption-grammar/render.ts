/**
 * @file Draws the image a grammar caption describes, as the training data does (tools/train-mini/data.py): the
 * object's signed distance d (pixels) gives each pixel the coverage clamp(0.5 - d, 0, 1), a one-pixel analytic
 * anti-aliasing ramp. Object side (circle diameter, square side, triangle base = height) is a fraction of the
 * shorter image side from {@link SIDE_RANGE}; colors and positions get the grammar's uniform jitter from a seeded
 * PRNG. Used to check the detector on clean images and as the "ground truth" row of the benchmark's grid.
 */
import type { DetectorImage } from './detector.ts';
import {
  type CaptionAttributes,
  COLOR_JITTER,
  COLORS,
  POSITION_CENTERS,
  POSITION_JITTER,
  SIDE_RANGE,
  seededRandom,
} from './grammar.ts';

/** Renders `a` at `width` x `height` (default square); same seed, same image. */
export function renderCaption(a: CaptionAttributes, seed: number, width: number, height = width): DetectorImage {
  const rand = seededRandom(seed);
  const jitterColor = (rgb: readonly number[]) =>
    rgb.map((v) => Math.min(255, Math.max(0, v + (rand() * 2 - 1) * COLOR_JITTER)) / 255);
  const obj = jitterColor(COLORS[a.color]);
  const bg = jitterColor(COLORS[a.background]);
  const [lo, hi] = SIDE_RANGE[a.size ?? 'any'];
  const side = lo + (hi - lo) * rand(); // fraction of min(H, W)
  const half = side / 2;
  const u = [rand(), rand()];
  const jit = [(rand() * 2 - 1) * POSITION_JITTER, (rand() * 2 - 1) * POSITION_JITTER];
  // Centre as fractions of (W, H): the asked position + jitter, kept inside; none asked: anywhere the object fits.
  const centre = a.position
    ? POSITION_CENTERS[a.position].map((c, i) => Math.min(Math.max(c + jit[i]!, half), 1 - half))
    : u.map((v) => half + v * (1 - 2 * half));
  const cx = centre[0]! * width;
  const cy = centre[1]! * height;
  const r = (side * Math.min(width, height)) / 2;
  const n1 = 1 / Math.sqrt(5);
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const dx = x + 0.5 - cx;
      const dy = y + 0.5 - cy;
      let d: number;
      if (a.shape === 'circle') d = Math.hypot(dx, dy) - r;
      else if (a.shape === 'square') d = Math.max(Math.abs(dx), Math.abs(dy)) - r;
      // Upright isosceles triangle, apex (0, -r), base corners (+-r, r), y down: the max of its three half-planes.
      else d = Math.max(dy - r, (2 * dx - dy - r) * n1, (-2 * dx - dy - r) * n1);
      const cov = Math.min(1, Math.max(0, 0.5 - d));
      const p = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) data[p + c] = Math.round((bg[c]! * (1 - cov) + obj[c]! * cov) * 255);
    }
  }
  return { width, height, data };
}
