/**
 * @file The CUDA planner's manifest: one calibration's table and plans, stored under the engine cache
 * (`<cacheDir>/cuda-plans/<model>-<key>.json`) so later loads of the same model on the same engine build and card
 * serve L and M without calibrating again. It holds the fp8 plans (`cuda-calibration.ts`) and each planned mode's
 * step caching (`cuda-step-cache.ts`).
 *
 * The key hashes everything the plans depend on: the planner version, the engine's identity (a hash of its
 * executable plus the card, CUDA runtime and compute capability: the layer times are the card's, and another build
 * may quantise or pick kernels differently), the model's fingerprint (its weight files' headers, sizes and configs:
 * `fingerprint.ts`), the calibration inputs, the budgets and the step-cache calibration (inputs, candidates, caching
 * rules, floors). The file repeats the identity fields and a reader
 * refuses a file whose fields differ, so a file copied or renamed by hand is not trusted either.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CudaEngineInfo } from '../runtime/cuda/index.ts';
import type { ComponentWeights } from '../shared/weights/index.ts';
import {
  CUDA_CALIBRATION,
  CUDA_FP8_PRESET_GLOBS,
  CUDA_PLANNER_VERSION,
  type CudaPresetCheck,
  engineGlobMatch,
} from './cuda-calibration.ts';
import type { CudaPlannedModes } from './cuda-modes.ts';
import { type CudaCalibration, type CudaModePlan, cudaPlannedBudgets } from './cuda-planner.ts';
import {
  CUDA_STEP_CACHE_CALIBRATION,
  type CudaModeStepCache,
  type CudaPlannedModeName,
  withStepCaches,
} from './cuda-step-cache.ts';
import type { ExecutorModePlan } from './executor.ts';

/** What a manifest is valid for. */
export interface CudaPlanIdentity {
  planner: string;
  /** {@link cudaEngineIdentity}. */
  engine: string;
  /** {@link cudaModelFingerprint}. */
  model: string;
  calibration: typeof CUDA_CALIBRATION;
  budgets: Record<string, number>;
  /** The step-cache calibration's inputs, candidates, rules and floors. */
  stepCacheCalibration: typeof CUDA_STEP_CACHE_CALIBRATION;
  /** fp8row was measured and offered to the planner next to fp8 (CUDA_PLANNER_FP8ROW). */
  fp8row: boolean;
}

/** The stored file. */
export interface CudaPlanManifest extends CudaPlanIdentity {
  format: 'fluxql-cuda-plans';
  created: string;
  /** The engine's `calibrated` table (as parsed). */
  table: CudaCalibration;
  /** Every planned mode's plan (`cuda-planner.ts`), measured. */
  plans: Record<string, CudaModePlan>;
  /** The fp8 preset's check and whether S keeps it. */
  preset: CudaPresetCheck;
  /** Plan name and rules served per mode (without step caching: see `stepCache`). */
  served: CudaPlannedModes;
  /** Each planned mode's calibrated step caching (threshold 0: none). */
  stepCache: Record<CudaPlannedModeName, CudaModeStepCache>;
}

/** The engine build and card the plans were measured on. */
export function cudaEngineIdentity(engineBin: string, card: CudaEngineInfo): string {
  const build = createHash('sha256').update(readFileSync(engineBin)).digest('hex').slice(0, 16);
  return `build ${build} | ${card.device} | cc ${card.computeCapability} | cuda ${card.cudaRuntime}`;
}

/** The weights calibration reads: the transformer and both text encoders (they make its conditioning). */
export function cudaModelFingerprint(components: Readonly<Record<string, ComponentWeights>>): string {
  const parts = ['transformer', 'text_encoder', 'text_encoder_2'].map((n) => `${n}:${components[n]?.fingerprint}`);
  return createHash('sha256').update(parts.join('|')).digest('hex');
}

/**
 * The identity of a calibration on `engine` for `model` with today's planner, inputs and budgets.
 * @param options.fp8row the planner offers fp8row (another plan set, so another manifest)
 */
export function cudaPlanIdentity(engine: string, model: string, options: { fp8row?: boolean } = {}): CudaPlanIdentity {
  return {
    planner: CUDA_PLANNER_VERSION,
    engine,
    model,
    calibration: CUDA_CALIBRATION,
    budgets: cudaPlannedBudgets(),
    stepCacheCalibration: CUDA_STEP_CACHE_CALIBRATION,
    fp8row: options.fp8row === true,
  };
}

/** Where the manifest of `modelName` under `id` lives in `cacheDir`. */
export function cudaPlanManifestPath(cacheDir: string, modelName: string, id: CudaPlanIdentity): string {
  const key = createHash('sha256').update(JSON.stringify(id)).digest('hex').slice(0, 16);
  // A hub model's name is `org/name`: keep it one file name.
  return join(cacheDir, 'cuda-plans', `${modelName.replaceAll('/', '--')}-${key}.json`);
}

/**
 * The stored manifest at `path` when it exists, parses and was made for `id`; undefined otherwise (`onLog` says why
 * an existing file is not used).
 */
export function readCudaPlanManifest(
  path: string,
  id: CudaPlanIdentity,
  onLog?: (m: string) => void,
): CudaPlanManifest | undefined {
  if (!existsSync(path)) return undefined;
  let m: CudaPlanManifest;
  try {
    m = JSON.parse(readFileSync(path, 'utf8')) as CudaPlanManifest;
  } catch (err) {
    onLog?.(`cuda planner: ignoring ${path}: ${(err as Error).message}`);
    return undefined;
  }
  const differs = (
    ['planner', 'engine', 'model', 'calibration', 'budgets', 'stepCacheCalibration', 'fp8row'] as const
  ).filter((k) => JSON.stringify(m[k]) !== JSON.stringify(id[k]));
  const servedOk = ['L', 'M', 'S'].every((k) => {
    const s = (m.served as unknown as Record<string, { plan?: unknown; rules?: unknown }> | undefined)?.[k];
    const c = (m.stepCache as unknown as Record<string, Partial<CudaModeStepCache>> | undefined)?.[k];
    const cacheOk =
      [c?.threshold, c?.warmupSteps, c?.maxConsecutive, c?.psnr].every(
        (v) => typeof v === 'number' && Number.isFinite(v) && v >= 0,
      ) && Number.isInteger(c?.maxConsecutive);
    return typeof s?.plan === 'string' && typeof s.rules === 'string' && cacheOk;
  });
  if (m.format !== 'fluxql-cuda-plans' || differs.length > 0 || !servedOk) {
    onLog?.(
      `cuda planner: ignoring ${path} (${differs.length > 0 ? `made for another ${differs.join(', ')}` : 'not a plans manifest'})`,
    );
    return undefined;
  }
  return m;
}

/** Writes the manifest atomically (a reader never sees half a file). */
export function writeCudaPlanManifest(path: string, m: CudaPlanManifest): void {
  mkdirSync(join(path, '..'), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, JSON.stringify(m, null, 2));
  renameSync(tmp, path);
}

/** The modes a manifest serves: its plans with each mode's calibrated step caching. */
export function cudaServedModes(m: CudaPlanManifest): CudaPlannedModes {
  return withStepCaches(m.served, m.stepCache);
}

/**
 * What the `models` query reports per planned mode from a manifest: the plan's budget, measured error and layers per
 * type (S's fp8 preset counted from the table by its globs), and the step caching with its calibrated PSNR.
 */
export function cudaModePlanReports(m: CudaPlanManifest, path: string): Record<string, ExecutorModePlan> {
  const out: Record<string, ExecutorModePlan> = {};
  const total = m.table.layers.length;
  const presetFp8 = m.table.layers.filter((l) => CUDA_FP8_PRESET_GLOBS.some((g) => engineGlobMatch(g, l.name))).length;
  for (const mode of ['L', 'M', 'S'] as const) {
    const plan = m.plans[mode]!;
    const preset = mode === 'S' && m.preset.kept;
    const fp8 = preset ? presetFp8 : plan.counts.fp8;
    const fp8row = preset ? 0 : (plan.counts.fp8row ?? 0);
    const c = m.stepCache[mode];
    out[mode] = {
      errorBudget: plan.budget,
      measuredError: preset ? m.preset.measuredError : (plan.measuredError ?? null),
      algorithms: [
        { algorithm: 'bf16', layers: total - fp8 - fp8row },
        { algorithm: 'fp8', layers: fp8 },
        // Listed when the planner offered it (a manifest without fp8row reads as before).
        ...(m.fp8row ? [{ algorithm: 'fp8row', layers: fp8row }] : []),
      ].sort((a, b) => b.layers - a.layers || a.algorithm.localeCompare(b.algorithm)),
      stepCache: {
        threshold: c.threshold,
        maxConsecutive: c.maxConsecutive,
        fullSteps: c.fullSteps,
        cachedSteps: c.cachedSteps,
        psnr: c.psnr,
        minPsnr: c.minPsnr,
      },
      source:
        `CUDA planner manifest ${path} (${m.created}): ${m.fp8row ? 'fp8/fp8row' : 'fp8'} plan measured on the loaded model` +
        `${preset ? ' (S: the fp8 preset)' : ''}; step cache calibrated at ${CUDA_STEP_CACHE_CALIBRATION.size}x` +
        `${CUDA_STEP_CACHE_CALIBRATION.size}, ${CUDA_STEP_CACHE_CALIBRATION.steps} steps, worst of ` +
        `${CUDA_STEP_CACHE_CALIBRATION.prompts.length} prompts vs original (threshold 0: no caching)`,
    };
  }
  return out;
}
