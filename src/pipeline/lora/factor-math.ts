/**
 * @file Row/column surgery on LoRA factors: splitting a fused BFL module's factors into its diffusers parts
 * (docs/FLUX_SPEC.md §7.4–7.6) and swapping the final layer's modulation halves. All matrices are row-major float32.
 */
import type { BflModule } from './model-layers.ts';

/** A factor pair before it is attached to a module: down `[r, in]`, up `[out, r]`, optional up bias `[out]`. */
export interface RawPair {
  a: Float32Array;
  b: Float32Array;
  rank: number;
  inFeatures: number;
  outFeatures: number;
  bias?: Float32Array;
}

/** Rows `[from, to)` of a row-major `[rows, cols]` matrix (a copy). */
export function sliceRows(m: Float32Array, cols: number, from: number, to: number): Float32Array {
  return m.slice(from * cols, to * cols);
}

/** Sub-matrix rows `[r0, r1)` × columns `[c0, c1)` of a row-major matrix with `cols` columns. */
export function block(m: Float32Array, cols: number, r0: number, r1: number, c0: number, c1: number): Float32Array {
  const w = c1 - c0;
  const out = new Float32Array((r1 - r0) * w);
  for (let r = r0; r < r1; r++) out.set(m.subarray(r * cols + c0, r * cols + c1), (r - r0) * w);
  return out;
}

/** Exchanges the first and second half of the rows (BFL (shift, scale) ↔ diffusers (scale, shift)). */
export function swapRowHalves(m: Float32Array, rows: number, cols: number): Float32Array {
  const half = (rows / 2) * cols;
  const out = new Float32Array(m.length);
  out.set(m.subarray(half), 0);
  out.set(m.subarray(0, half), half);
  return out;
}

/**
 * Whether `up` `[Σout, r]` is block-diagonal for `parts` equal rank chunks: part i's rows use only columns
 * `[i·r/k, (i+1)·r/k)`, every other entry exactly zero.
 */
export function isBlockDiagonal(up: Float32Array, rank: number, outs: readonly number[]): boolean {
  const k = outs.length;
  if (k < 2 || rank % k !== 0) return false;
  const chunk = rank / k;
  let row = 0;
  for (let i = 0; i < k; i++) {
    for (let r = row; r < row + outs[i]!; r++) {
      for (let c = 0; c < rank; c++) {
        const inside = c >= i * chunk && c < (i + 1) * chunk;
        if (!inside && up[r * rank + c] !== 0) return false;
      }
    }
    row += outs[i]!;
  }
  return true;
}

/**
 * Splits a BFL module's factor pair into its diffusers parts.
 * - `blockDiagonal` (kohya): when `up` is block-diagonal, each part gets its rank chunk of `down` and its diagonal
 *   block of `up` (rank r/k); otherwise every part shares `down` and gets its rows of `up`.
 * - Without it (XLabs, BFL Control): shared `down`, rows of `up` (and of the bias) per part.
 * `swapHalves` modules exchange the up rows' halves first (only up: the rank axis stays aligned with down).
 */
export function splitBflPair(
  pair: RawPair,
  mod: BflModule,
  options: { blockDiagonal?: boolean } = {},
): { module: string; pair: RawPair }[] {
  let { b, bias } = pair;
  if (mod.swapHalves) {
    b = swapRowHalves(b, pair.outFeatures, pair.rank);
    if (bias) bias = swapRowHalves(bias, pair.outFeatures, 1);
  }
  if (mod.parts.length === 1) return [{ module: mod.parts[0]!.module, pair: { ...pair, b, bias } }];
  const outs = mod.parts.map((p) => p.outFeatures);
  const diag = options.blockDiagonal === true && isBlockDiagonal(b, pair.rank, outs);
  const chunk = diag ? pair.rank / outs.length : pair.rank;
  let row = 0;
  return mod.parts.map((p, i) => {
    const rows: [number, number] = [row, row + p.outFeatures];
    row += p.outFeatures;
    const a = diag ? sliceRows(pair.a, pair.inFeatures, i * chunk, (i + 1) * chunk) : pair.a;
    const up = diag
      ? block(b, pair.rank, rows[0], rows[1], i * chunk, (i + 1) * chunk)
      : sliceRows(b, pair.rank, ...rows);
    return {
      module: p.module,
      pair: {
        a,
        b: up,
        rank: chunk,
        inFeatures: pair.inFeatures,
        outFeatures: p.outFeatures,
        bias: bias?.slice(rows[0], rows[1]),
      },
    };
  });
}
