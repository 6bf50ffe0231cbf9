/**
 * @file The plan of a compressed mode as the compiler consumes it and the manifest stores it: one algorithm per
 * Linear layer of the XL graph (fused layer names, e.g. `transformer_blocks.0.attn.to_qkv`, `modulation`), with the
 * measurements that led to it.
 */
import { createHash } from 'node:crypto';

/** One layer's choice and why (the manifest's `plan` entries). */
export interface PlanEntry {
  layer: string;
  algorithm: string;
  /** Relative output error of the transformer when only this layer uses `algorithm` (0 for `fp32`). */
  error: number;
  /** Time this choice saves against float32 on the benchmark configuration, ms per transformer forward. */
  gainMs: number;
}

/** A compressed mode's plan. */
export interface ModePlan {
  mode: string;
  /** The mode's error budget (relative output error). */
  budget: number;
  entries: PlanEntry[];
  /** Error of the whole plan predicted from the per-layer errors (root of summed squares). */
  predictedError: number;
  /** Error of the whole plan measured on the calibration inputs. */
  measuredError: number;
  /** Predicted time saved per forward, ms (Σ gainMs). */
  gainMs: number;
  /** How the measurements were taken (tokens, calibration inputs, threads). */
  calibration: Record<string, number | string>;
}

/** `layer → algorithm` of a plan. */
export function planChoices(plan: Pick<ModePlan, 'entries'>): Record<string, string> {
  return Object.fromEntries(plan.entries.map((e) => [e.layer, e.algorithm]));
}

/** A stable key of the plan's choices (what changes the compiled graph), for the compile cache. */
export function planKey(plan: Pick<ModePlan, 'entries'>): string {
  const sorted = [...plan.entries].sort((a, b) => (a.layer < b.layer ? -1 : 1)).map((e) => `${e.layer}=${e.algorithm}`);
  return createHash('sha256').update(sorted.join('\n')).digest('hex').slice(0, 16);
}
