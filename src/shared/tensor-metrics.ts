/** @file Error metrics between float tensors, used by conformance checks and quality benchmarks. */

/** Relative error ‖a − b‖₂ / ‖b‖₂ (NaN anywhere gives Infinity, so NaN never passes a limit). */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relativeError: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  const r = Math.sqrt(num) / Math.sqrt(den || 1);
  return Number.isNaN(r) ? Number.POSITIVE_INFINITY : r;
}

/** Largest |a − b| (NaN gives Infinity). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`maxAbsDiff: lengths differ (${a.length} vs ${b.length})`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}

/** Number of positions where two integer sequences differ (or the length difference). */
export function mismatches(a: ArrayLike<number | bigint>, b: ArrayLike<number | bigint>): number {
  let n = Math.abs(a.length - b.length);
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (BigInt(a[i]!) !== BigInt(b[i]!)) n++;
  return n;
}
