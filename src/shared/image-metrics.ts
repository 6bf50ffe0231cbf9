/**
 * @file Image quality metrics (quality benchmark, step-cache calibration): PSNR and SSIM between two float images `[C, H, W]` in [0, 1]
 * (the pipeline's `floatImages`).
 *
 * SSIM follows Wang et al. 2004 as their reference implementation computes it: an 11×11 Gaussian window (σ 1.5),
 * K1 0.01, K2 0.03, data range 1, local statistics over the "valid" window positions only (no padding), the mean
 * SSIM map per channel, averaged over channels. Images smaller than the window use the largest odd window that fits.
 */

/** Mean squared error of two equally long arrays. */
export function mse(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`mse: lengths differ (${a.length} vs ${b.length})`);
  if (a.length === 0) throw new Error('mse: empty input');
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    s += d * d;
  }
  return s / a.length;
}

/** Peak signal-to-noise ratio in dB for data range `peak` (1 for [0, 1] images); Infinity for identical inputs. */
export function psnr(a: ArrayLike<number>, b: ArrayLike<number>, peak = 1): number {
  const m = mse(a, b);
  return m === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10((peak * peak) / m);
}

/** Normalised 1-D Gaussian of odd length `size`. */
function gaussian(size: number, sigma: number): Float64Array {
  const g = new Float64Array(size);
  const c = (size - 1) / 2;
  let sum = 0;
  for (let i = 0; i < size; i++) {
    g[i] = Math.exp(-((i - c) ** 2) / (2 * sigma * sigma));
    sum += g[i]!;
  }
  for (let i = 0; i < size; i++) g[i]! /= sum;
  return g;
}

/** Separable "valid" filtering of an `h × w` plane: result `(h − k + 1) × (w − k + 1)`. */
function filterValid(x: Float64Array, h: number, w: number, g: Float64Array): Float64Array {
  const k = g.length;
  const ow = w - k + 1;
  const oh = h - k + 1;
  const rows = new Float64Array(h * ow);
  for (let y = 0; y < h; y++) {
    for (let x0 = 0; x0 < ow; x0++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += g[i]! * x[y * w + x0 + i]!;
      rows[y * ow + x0] = s;
    }
  }
  const out = new Float64Array(oh * ow);
  for (let y0 = 0; y0 < oh; y0++) {
    for (let x0 = 0; x0 < ow; x0++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += g[i]! * rows[(y0 + i) * ow + x0]!;
      out[y0 * ow + x0] = s;
    }
  }
  return out;
}

/** Mean SSIM of two single-channel planes `h × w`. */
export function ssimPlane(a: ArrayLike<number>, b: ArrayLike<number>, h: number, w: number, peak = 1): number {
  if (a.length !== h * w || b.length !== h * w) throw new Error(`ssim: expected ${h}×${w} planes`);
  let size = Math.min(11, h, w);
  if (size % 2 === 0) size--;
  const g = gaussian(size, 1.5);
  const A = Float64Array.from(a as ArrayLike<number>);
  const B = Float64Array.from(b as ArrayLike<number>);
  const prod = (x: Float64Array, y: Float64Array) => x.map((v, i) => v * y[i]!);
  const muA = filterValid(A, h, w, g);
  const muB = filterValid(B, h, w, g);
  const aa = filterValid(prod(A, A), h, w, g);
  const bb = filterValid(prod(B, B), h, w, g);
  const ab = filterValid(prod(A, B), h, w, g);
  const c1 = (0.01 * peak) ** 2;
  const c2 = (0.03 * peak) ** 2;
  let sum = 0;
  for (let i = 0; i < muA.length; i++) {
    const ma = muA[i]!;
    const mb = muB[i]!;
    const va = aa[i]! - ma * ma;
    const vb = bb[i]! - mb * mb;
    const cov = ab[i]! - ma * mb;
    sum += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
  }
  return sum / muA.length;
}

/** Mean SSIM of two images `[C, H, W]`, averaged over channels. */
export function ssim(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  channels: number,
  h: number,
  w: number,
  peak = 1,
): number {
  const plane = h * w;
  if (a.length !== channels * plane || b.length !== channels * plane) {
    throw new Error(`ssim: expected ${channels}×${h}×${w} images, got ${a.length} and ${b.length} values`);
  }
  let s = 0;
  for (let c = 0; c < channels; c++) {
    const sa = Array.prototype.slice.call(a, c * plane, (c + 1) * plane) as number[];
    const sb = Array.prototype.slice.call(b, c * plane, (c + 1) * plane) as number[];
    s += ssimPlane(sa, sb, h, w, peak);
  }
  return s / channels;
}
