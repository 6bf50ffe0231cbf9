/**
 * @file The step-cache threshold search both engines calibrate with (the ONNX S engine: `step-cache-calibration.ts`;
 * the CUDA modes: `cuda-step-cache.ts`): candidates are tried in ascending order and the largest whose images keep
 * the floor wins. Why stop at the first failure: a larger threshold caches at least the steps a smaller one caches
 * on the same inputs, so its images are no closer to the reference (and each try costs whole generations).
 */
import { psnr } from '../../shared/image-metrics.ts';

/** One candidate tried: its worst PSNR over the calibration prompts (identical images: 100). */
export interface ThresholdTrial {
  threshold: number;
  psnr: number;
}

/** What one candidate's images measured. */
export interface ThresholdMeasure {
  /** Worst PSNR over the calibration prompts (dB; Infinity for identical images). */
  psnr: number;
  /**
   * The rule cached every step it allows on every prompt ({@link mostCachedSteps}): a larger threshold makes the same
   * decisions on these inputs, so it measures the same images. The search stops there, keeping this candidate (the
   * smallest threshold with that result, the least aggressive on other prompts).
   */
  saturated?: boolean;
}

/** PSNR as stored: identical images (Infinity) as 100 dB, so the value survives JSON. */
export function storedPsnr(db: number): number {
  return Math.min(db, 100);
}

/**
 * The largest of `candidates` (ascending) whose worst PSNR stays >= `minPsnr`, stopping at the first failure or at
 * a saturated candidate; threshold 0 (never cache) when the first candidate already fails.
 * @returns the threshold, its measured PSNR (stored form; null for 0) and every candidate tried, in order
 */
export async function largestPassingThreshold(
  candidates: readonly number[],
  minPsnr: number,
  measure: (threshold: number) => Promise<number | ThresholdMeasure>,
): Promise<{ threshold: number; psnr: number | null; tried: ThresholdTrial[] }> {
  const tried: ThresholdTrial[] = [];
  let best: { threshold: number; psnr: number | null } = { threshold: 0, psnr: null };
  for (const candidate of candidates) {
    const m = await measure(candidate);
    const { psnr: db, saturated } = typeof m === 'number' ? { psnr: m, saturated: false } : m;
    tried.push({ threshold: candidate, psnr: storedPsnr(db) });
    if (!(db >= minPsnr)) break;
    best = { threshold: candidate, psnr: storedPsnr(db) };
    if (saturated) break;
  }
  return { ...best, tried };
}

/** The worst PSNR of `images` against `references` (same order), pixel `peak` (1 for float images, 255 for RGB8). */
export function worstPsnr(
  images: readonly ArrayLike<number>[],
  references: readonly ArrayLike<number>[],
  peak = 1,
): number {
  return Math.min(...images.map((im, i) => psnr(im, references[i]!, peak)));
}

/**
 * The most steps of `steps` the First-Block-Cache rule can cache (`step-cache.ts`, PROTOCOL.md `step_cache`): step 0
 * always runs in full (no full step before it), none before `warmupSteps`, and at most `maxConsecutive` in a row
 * after each full step.
 */
export function mostCachedSteps(steps: number, warmupSteps: number, maxConsecutive: number): number {
  const n = Math.max(0, steps - Math.max(warmupSteps, 1));
  const m = maxConsecutive;
  return Math.floor(n / (m + 1)) * m + Math.min(n % (m + 1), m);
}
