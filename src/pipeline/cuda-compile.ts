/**
 * @file Planning the CUDA engine's modes ahead of serving (`fluxql compile --engine cuda`): the engine is started as
 * the server starts it, asked for its card, and the server's own planner path (`cuda-mode-planning.ts`) runs on the
 * same cache folder, so the manifest lands where `fluxql serve --engine cuda` looks and its first start serves L, M
 * and S without calibrating. One planner run decides every planned mode at once; each requested mode is then
 * reported from its result (plan, fp8 layers, step-cache threshold) or refused with the reason it is not served.
 */
import { existsSync } from 'node:fs';
import { CudaEngineClient } from '../runtime/cuda/index.ts';
import { resolveMode } from '../shared/vocabulary/index.ts';
import { CudaEngineNotFoundError } from './cuda-executor.ts';
import { type CudaModePlanningOptions, loadCudaModel, planCudaModes } from './cuda-mode-planning.ts';

/** One requested mode as planned (one JSON line of `fluxql compile --engine cuda`). */
export interface CudaCompiledMode {
  mode: string;
  /** The engine plan its jobs name; null: the base plan (original, XL). */
  plan: string | null;
  /**
   * Transformer Linears in fp8 (S's fp8 preset counted by its globs); 0 on the base plan; null for a plan the planner
   * did not make (S's fp8 preset on an engine whose precision the planner does not run on).
   */
  fp8Layers: number | null;
  /** Transformer Linears in fp8row (0 unless the planner offered it, CUDA_PLANNER_FP8ROW); null as `fp8Layers`. */
  fp8rowLayers: number | null;
  /** The calibrated step-cache threshold (0: the mode keeps no caching); null: not a planned mode. */
  stepCacheThreshold: number | null;
  /** The calibrated caching rule: at most this many cached steps in a row; null: not a planned mode. */
  stepCacheMaxConsecutive: number | null;
  /** The planner's manifest; null when the mode needs none. */
  manifest: string | null;
  /** True when this run calibrated, false when it found the manifest stored; null when no planner ran. */
  calibrated: boolean | null;
  /** Seconds of the whole run (engine start and one planner run for every mode). */
  seconds: number;
}

/** A requested mode the CUDA engine does not serve (e.g. L on an f32 engine), with the engine's reason. */
export class CudaModeUnavailableError extends Error {
  override name = 'CudaModeUnavailableError';
  readonly code = 'mode_unavailable';
  constructor(
    readonly mode: string,
    readonly reason: string,
  ) {
    super(`mode ${mode} cannot be served by this CUDA engine: ${reason}`);
  }
}

/** The per-layer planner failed (engine error or exit, malformed answer, plan over budget): nothing was stored. */
export class CudaPlanningError extends Error {
  override name = 'CudaPlanningError';
  readonly code = 'planning_failed';
}

/**
 * Plans `modes` of the model in `modelDir` on the engine `o.engineBin` and stores the manifest in `o.cacheDir`.
 * @throws UnknownModeError for a name no model has; CudaEngineNotFoundError; CudaModeUnavailableError for a mode
 *   the engine's precision cannot serve; CudaPlanningError when the planner failed; the engine's own errors when it
 *   cannot start
 */
export async function compileCudaModes(
  o: CudaModePlanningOptions & { cacheDir: string; modelDir: string },
  modes: readonly string[],
): Promise<CudaCompiledMode[]> {
  for (const m of modes) resolveMode(m);
  if (!existsSync(o.engineBin)) throw new CudaEngineNotFoundError(o.engineBin);
  const t0 = performance.now();
  const model = await loadCudaModel(o.modelDir);
  // The card is part of the manifest's key; the planner calibrates on a process of its own, so this one only answers.
  const client = CudaEngineClient.start({
    bin: o.engineBin,
    ...(o.env ? { env: o.env } : {}),
    ...(o.onLog ? { onLog: o.onLog } : {}),
  });
  let card: Awaited<ReturnType<CudaEngineClient['info']>>;
  try {
    card = await client.info();
  } finally {
    await client.quit().catch(() => undefined);
  }
  const planning = await planCudaModes(o, model, card);
  if (planning.failure) throw new CudaPlanningError(planning.failure);
  for (const m of modes) {
    const u = planning.modes.unavailable.find((x) => x.mode === m);
    if (u) throw new CudaModeUnavailableError(m, u.reason);
  }
  const seconds = (performance.now() - t0) / 1000;
  return modes.map((mode) => {
    const spec = planning.modes.find((x) => x.mode === mode)!;
    const report = planning.modePlans?.[mode];
    // The plan's layers in `algorithm`: from the planner's report; 0 on the base plan; null for an unplanned plan.
    const layersIn = (algorithm: string) =>
      report
        ? (report.algorithms.find((a) => a.algorithm === algorithm)?.layers ?? 0)
        : spec.plan === undefined
          ? 0
          : null;
    return {
      mode,
      plan: spec.plan ?? null,
      fp8Layers: layersIn('fp8'),
      fp8rowLayers: layersIn('fp8row'),
      stepCacheThreshold: report?.stepCache?.threshold ?? null,
      stepCacheMaxConsecutive: report?.stepCache?.maxConsecutive ?? null,
      manifest: report ? (planning.manifestPath ?? null) : null,
      calibrated: report ? (planning.calibrated ?? null) : null,
      seconds,
    };
  });
}
