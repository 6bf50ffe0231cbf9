/**
 * @file The elastic modes the CUDA engine serves, and the engine precision plan each mode's jobs run.
 *
 * One loaded engine serves them all: the engine makes each named plan's alternate weights once at `load` (`plans`)
 * and a job picks its plan at `prepare` (`plan`), so switching modes reloads nothing (engines/cuda/PROTOCOL.md).
 * Only what is real is listed:
 * - `original`: the base plan (the executor's precision, bf16 by default).
 * - `XL`: the same weights and plan as `original`. On ONNX, XL is the fused, mathematically equivalent graph; the
 *   CUDA engine's `original` path is already that (fused q/k/v, all modulations in one GEMM per block at prepare,
 *   each step replayed from one CUDA graph). On a bf16 engine XL's jobs also write the branch outputs (attention
 *   out-projections, MLP-outs, single proj_outs) in bf16, as diffusers' bf16 Linears do, before the fp32 gated
 *   residual add (`prepare`'s `branch_bf16`): original's math within bf16 rounding, less memory traffic.
 * - `L`, `M` (bf16 base, once the per-layer planner has run on the loaded model: `cuda-calibration.ts`): the fp8
 *   layer sets planned from the engine's `calibrate` table under their error budgets, as exact-name rules.
 * - `S`: the engine's `fp8` preset (bf16 plus the LayerNorm-fed layers, q/k/v and MLP-in, in fp8 E4M3 with
 *   per-tensor scales), or the planned S rules when the planner found the preset over S's budget or slower than
 *   its own plan (`cuda-calibration.ts` decides). It needs a bf16 base: an f32 engine has no fp8 path.
 * Modes not served carry the reason (`unavailable`), which the service gives when one is asked for.
 *
 * Step caching (First-Block-Cache, PROTOCOL.md `step_cache`) is part of a planned mode when the planner calibrated a
 * threshold for it on the loaded model (`cuda-step-cache.ts`): its jobs send it at `prepare`, the others send none.
 * fp8 alone does not reach the modes' speed goals (issue 15), so L, M and S cache whenever their PSNR floor allows.
 */
import type { CudaPlanSpec, CudaPrecision, CudaStepCache } from '../runtime/cuda/index.ts';
import { REFERENCE_MODE } from '../shared/vocabulary/index.ts';
import { checkMode } from './sample-checks.ts';

/** One mode on the CUDA engine. */
export interface CudaModeSpec {
  mode: string;
  /** The engine plan its jobs name (`prepare`'s `plan`); absent: the base plan. */
  plan?: string;
  /** What `load`'s `plans` gives that plan: a preset name or rules. */
  rules?: CudaPlanSpec;
  /** Step caching of its jobs (`prepare`'s `step_cache`); absent: none. */
  stepCache?: CudaStepCache;
  /** Its jobs' branch outputs in bf16 (`prepare`'s `branch_bf16`, bf16 engines): XL. */
  branchBf16?: boolean;
}

/** A mode the engine does not serve, and why. */
export interface CudaUnavailableMode {
  mode: string;
  reason: string;
}

/** The engine plan name of the fp8 preset, as `load`'s `plans` names it. */
export const CUDA_FP8_PLAN = 'fp8';

/** One planned mode: its engine plan's name and rules, and its step caching when calibrated (threshold > 0). */
export interface CudaPlannedMode {
  plan: string;
  rules: CudaPlanSpec;
  stepCache?: CudaStepCache;
}

/** The per-layer planner's plans for a bf16 engine (`cuda-calibration.ts`) per mode. */
export interface CudaPlannedModes {
  L: CudaPlannedMode;
  M: CudaPlannedMode;
  S: CudaPlannedMode;
}

/**
 * The modes an engine of `precision` serves, reference first, and why the others are not served.
 * @param planned the planner's plans (bf16 only); without them L and M are unavailable for `why`
 */
export function cudaModeTable(
  precision: CudaPrecision,
  planned?: CudaPlannedModes,
  why = 'the per-layer planner has not run on this engine',
): readonly CudaModeSpec[] & { unavailable: readonly CudaUnavailableMode[] } {
  const base: CudaModeSpec[] = [
    { mode: REFERENCE_MODE },
    { mode: 'XL', ...(precision === 'bf16' ? { branchBf16: true } : {}) },
  ];
  // fp8 plans run over a bf16 compute type: not on the f32 conformance engine.
  if (precision === 'f32') {
    const reason = 'an f32 engine has no fp8 path (fp8 plans need the bf16 base precision)';
    return withUnavailable(base, ['L', 'M', 'S'], reason);
  }
  if (precision !== 'bf16' || !planned) {
    const reason =
      precision !== 'bf16' ? `the per-layer planner runs on a bf16 base only (this engine: ${precision})` : why;
    return withUnavailable([...base, { mode: 'S', plan: CUDA_FP8_PLAN, rules: 'fp8' }], ['L', 'M'], reason);
  }
  return withUnavailable([...base, ...(['L', 'M', 'S'] as const).map((mode) => ({ mode, ...planned[mode] }))], [], '');
}

function withUnavailable(
  modes: CudaModeSpec[],
  missing: readonly string[],
  reason: string,
): CudaModeSpec[] & { unavailable: CudaUnavailableMode[] } {
  return Object.assign(modes, { unavailable: missing.map((mode) => ({ mode, reason })) });
}

/**
 * The `plans` `load` sends for a table: every plan some mode names (modes sharing a plan name share its rules).
 * @throws Error when two modes give one plan name different rules
 */
export function cudaLoadPlans(table: readonly CudaModeSpec[]): Record<string, CudaPlanSpec> {
  const plans: Record<string, CudaPlanSpec> = {};
  for (const m of table) {
    if (m.plan === undefined) continue;
    const rules = m.rules ?? m.plan;
    if (plans[m.plan] !== undefined && plans[m.plan] !== rules)
      throw new Error(`cudaLoadPlans: plan ${m.plan} is given two different rule sets`);
    plans[m.plan] = rules;
  }
  return plans;
}

/**
 * The table's entry for a request's mode (absent mode: the reference): its engine plan (undefined: the base plan)
 * and step caching.
 * @throws FluxArgumentError for a mode the table does not serve
 */
export function cudaModeOf(table: readonly CudaModeSpec[], mode: string | undefined): CudaModeSpec {
  checkMode(
    mode,
    table.map((m) => m.mode),
  );
  return table.find((m) => m.mode === (mode ?? REFERENCE_MODE))!;
}
