/**
 * @file The elastic modes the CUDA engine serves today, and the engine precision plan each mode's jobs run.
 *
 * One loaded engine serves them all: the engine makes each named plan's alternate weights once at `load` (`plans`)
 * and a job picks its plan at `prepare` (`plan`), so switching modes reloads nothing (engines/cuda/PROTOCOL.md).
 * Only what is real today is listed:
 * - `original`: the base plan (the executor's precision, bf16 by default).
 * - `XL`: the same weights and plan as `original`. On ONNX, XL is the fused, mathematically equivalent graph; the
 *   CUDA engine's `original` path is already that (fused q/k/v, all modulations in one GEMM per block at prepare,
 *   each step replayed from one CUDA graph), so XL computes exactly what `original` does.
 * - `S`: the engine's `fp8` preset (bf16 plus the LayerNorm-fed layers, q/k/v and MLP-in, in fp8 E4M3 with
 *   per-tensor scales). It needs a bf16 base: an f32 engine has no fp8 path, so there S is not offered.
 * `L` and `M` stay unavailable on CUDA until the per-layer planner (engine `calibrate` + `cuda-planner.ts`, built
 * but not yet run on a GPU) has run on the loaded model and its plans are served (engines/cuda/NOTES.md session 12).
 */
import type { CudaPlanSpec, CudaPrecision } from '../runtime/cuda/index.ts';
import { REFERENCE_MODE } from '../shared/vocabulary/index.ts';
import { checkMode } from './sample-checks.ts';

/** One mode on the CUDA engine. */
export interface CudaModeSpec {
  mode: string;
  /** The engine plan its jobs name (`prepare`'s `plan`); absent: the base plan. */
  plan?: string;
}

/** The engine plan name of the fp8 preset, as `load`'s `plans` names it. */
export const CUDA_FP8_PLAN = 'fp8';

/** The named plans the executor asks the engine for at `load`: plan name → preset or rules. */
const PLAN_SPECS: Readonly<Record<string, CudaPlanSpec>> = { [CUDA_FP8_PLAN]: 'fp8' };

/** The modes an engine of `precision` serves, reference first. */
export function cudaModeTable(precision: CudaPrecision): readonly CudaModeSpec[] {
  const base: CudaModeSpec[] = [{ mode: REFERENCE_MODE }, { mode: 'XL' }];
  // fp8 plans run over a bf16 compute type: not on the f32 conformance engine.
  return precision === 'f32' ? base : [...base, { mode: 'S', plan: CUDA_FP8_PLAN }];
}

/** The `plans` `load` sends for a table: every plan some mode names. */
export function cudaLoadPlans(table: readonly CudaModeSpec[]): Record<string, CudaPlanSpec> {
  const plans: Record<string, CudaPlanSpec> = {};
  for (const m of table) if (m.plan !== undefined) plans[m.plan] = PLAN_SPECS[m.plan]!;
  return plans;
}

/**
 * The engine plan of a request's mode (absent mode: the reference); undefined is the base plan.
 * @throws FluxArgumentError for a mode the table does not serve
 */
export function cudaPlanOf(table: readonly CudaModeSpec[], mode: string | undefined): string | undefined {
  checkMode(
    mode,
    table.map((m) => m.mode),
  );
  return table.find((m) => m.mode === (mode ?? REFERENCE_MODE))!.plan;
}
