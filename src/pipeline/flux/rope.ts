/**
 * @file Rotary position tables of FLUX (diffusers' FluxPosEmbed, docs/FLUX_SPEC.md §5.3), computed on the CPU and fed to the
 * compiled transformer graph as the `rope_cos` / `rope_sin` inputs.
 *
 * For axis `a` of width `d_a` and position `p = ids[s, a]`, frequency `ω_j = θ^(−2j/d_a)` (j < d_a/2) gives the
 * angle `p·ω_j`; its cos and sin are each written twice, interleaved (c0, c0, c1, c1, …), to match interleaved-pair
 * RoPE. The axes are concatenated in order, so a head dim of `sum(axesDims)` is covered. As in diffusers the
 * frequencies and angles are float64 and only the final cos/sin are rounded to float32.
 */
import { FluxArgumentError } from './latents.ts';

/** FLUX.1-dev's RoPE axes: frame index 16, row 56, column 56 (head dim 128). */
export const FLUX_DEV_AXES_DIMS: readonly number[] = Object.freeze([16, 56, 56]);

/** RoPE base θ; hard-coded in FLUX (not a config field). */
export const ROPE_THETA = 10000;

/** RoPE tables for one token sequence. */
export interface RopeTables {
  /** `[S, dim]` cosines. */
  cos: Float32Array;
  /** `[S, dim]` sines. */
  sin: Float32Array;
  /** Number of tokens S. */
  seqLen: number;
  /** `sum(axesDims)`, the attention head dim. */
  dim: number;
}

/**
 * Concatenates text ids `[T, n]` and image ids `[L, n]` into `[T + L, n]`, text first (the order the transformer
 * concatenates its token streams).
 */
export function concatIds(txtIds: Float32Array, imgIds: Float32Array): Float32Array {
  const out = new Float32Array(txtIds.length + imgIds.length);
  out.set(txtIds, 0);
  out.set(imgIds, txtIds.length);
  return out;
}

/**
 * The cos/sin tables of positions `ids` (`[S, axesDims.length]`, row-major).
 * @param axesDims per-axis rotary widths, each a positive even integer, e.g. `[16, 56, 56]` or the tiny `[4, 6, 6]`.
 * @param theta frequency base. @default 10000
 * @throws FluxArgumentError naming `axesDims`, `ids` or `theta` on bad input.
 */
export function ropeTables(
  ids: Float32Array,
  axesDims: readonly number[] = FLUX_DEV_AXES_DIMS,
  theta = ROPE_THETA,
): RopeTables {
  const nAxes = axesDims.length;
  if (nAxes === 0) throw new FluxArgumentError('axesDims', 'must name at least one axis');
  for (const d of axesDims) {
    if (!Number.isInteger(d) || d < 2 || d % 2 !== 0) {
      throw new FluxArgumentError('axesDims', `every axis width must be a positive even integer, got [${axesDims}]`);
    }
  }
  if (!(theta > 0) || !Number.isFinite(theta)) throw new FluxArgumentError('theta', `must be > 0, got ${theta}`);
  if (ids.length % nAxes !== 0) {
    throw new FluxArgumentError('ids', `length ${ids.length} is not a multiple of the ${nAxes} axes`);
  }
  const seqLen = ids.length / nAxes;
  const dim = axesDims.reduce((a, b) => a + b, 0);

  // Per output column: which axis feeds it and its float64 frequency; column pairs (2j, 2j+1) share ω_j.
  const colAxis = new Int32Array(dim / 2);
  const colFreq = new Float64Array(dim / 2);
  let k = 0;
  for (let a = 0; a < nAxes; a++) {
    const d = axesDims[a]!;
    for (let j = 0; j < d / 2; j++, k++) {
      colAxis[k] = a;
      // diffusers: 1.0 / theta ** (arange(0, d, 2) / d), float64.
      colFreq[k] = 1 / theta ** ((2 * j) / d);
    }
  }

  const cos = new Float32Array(seqLen * dim); // [S, dim]
  const sin = new Float32Array(seqLen * dim); // [S, dim]
  for (let s = 0; s < seqLen; s++) {
    const row = s * dim;
    for (let p = 0; p < dim / 2; p++) {
      // Positions are float32 in diffusers (`ids.float()`); the product and cos/sin are float64.
      const angle = ids[s * nAxes + colAxis[p]!]! * colFreq[p]!;
      const c = Math.cos(angle);
      const sn = Math.sin(angle);
      cos[row + 2 * p] = c;
      cos[row + 2 * p + 1] = c;
      sin[row + 2 * p] = sn;
      sin[row + 2 * p + 1] = sn;
    }
  }
  return { cos, sin, seqLen, dim };
}
