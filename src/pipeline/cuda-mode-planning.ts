/**
 * @file The CUDA engine's planned modes for one model, decided once per (engine build, card, model): the stored
 * manifest when there is one (`cuda-plan-manifest.ts`), else a calibration on an engine process of its own (the fp8
 * plans, `cuda-calibration.ts`, then each mode's step caching, `cuda-step-cache.ts`) stored for the next start.
 *
 * Two callers run this same path: the CUDA executor at its first engine start (`fluxql serve --engine cuda`), and
 * `fluxql compile --engine cuda`, which plans ahead of serving so the server's first start only reads the manifest.
 * Both pass the card the engine reported (`info`: part of the manifest's key) and the same cache folder (CACHE_DIR).
 */
import {
  CudaEngineClient,
  type CudaEngineInfo,
  type CudaLoadSpec,
  type CudaPrecision,
  cudaLoadSpec,
} from '../runtime/cuda/index.ts';
import { type ModelRepo, resolveModelRepo } from '../shared/weights/index.ts';
import { calibrateCudaModes, cudaCalibrationInputs } from './cuda-calibration.ts';
import { cudaLoadPlans, cudaModeTable } from './cuda-modes.ts';
import {
  type CudaPlanManifest,
  cudaEngineIdentity,
  cudaModelFingerprint,
  cudaModePlanReports,
  cudaPlanIdentity,
  cudaPlanManifestPath,
  cudaServedModes,
  readCudaPlanManifest,
  writeCudaPlanManifest,
} from './cuda-plan-manifest.ts';
import { calibrateCudaStepCache, cudaStepCacheInputs } from './cuda-step-cache.ts';
import type { ExecutorModePlan } from './executor.ts';
import { type FlowMatchConfig, parseSchedulerConfig } from './flux/schedule.ts';
import { type FluxTokenizers, loadFluxTokenizers } from './flux/tokenize.ts';

/** What the engine and the planner read of a model folder (resolved by the same code as the ORT path). */
export interface CudaModel {
  repo: ModelRepo;
  /** The model folder as resolved (`repo.root`); its last name names the manifest. */
  modelDir: string;
  spec: CudaLoadSpec;
  tokenizers: FluxTokenizers;
  scheduler: FlowMatchConfig;
  /** The planner's key for the weights (`cudaModelFingerprint`). */
  fingerprint: string;
}

/** Resolves `modelDir` (diffusers or BFL layout) into the engine's load spec, tokenizers, schedule and fingerprint. */
export async function loadCudaModel(modelDir: string): Promise<CudaModel> {
  const repo = resolveModelRepo(modelDir);
  return {
    repo,
    modelDir: repo.root,
    spec: cudaLoadSpec(repo),
    tokenizers: await loadFluxTokenizers({ clip: repo.tokenizerDir, t5: repo.tokenizer2Dir }),
    scheduler: parseSchedulerConfig(repo.schedulerConfig, `${repo.schedulerDir}/scheduler_config.json`),
    fingerprint: cudaModelFingerprint(repo.components),
  };
}

/** How the planner reaches the engine. */
export interface CudaModePlanningOptions {
  /** The `fluxql-engine` executable (its hash is part of the manifest's key). */
  engineBin: string;
  precision: CudaPrecision;
  /** CACHE_DIR: manifests live in `<cacheDir>/cuda-plans/`. Without it the planner does not run. */
  cacheDir?: string;
  loraMaxMb?: number;
  /** The planner measures and routes fp8row next to fp8 (CUDA_PLANNER_FP8ROW). @default false */
  fp8row?: boolean;
  /** Environment of the calibration engine process. @default process.env */
  env?: NodeJS.ProcessEnv;
  onLog?: (line: string) => void;
}

/** The modes an engine serves after planning, and where their plans came from. */
export interface CudaModePlanning {
  /** Served modes with their engine plans and step caching; the others with the reason (`cuda-modes.ts`). */
  modes: ReturnType<typeof cudaModeTable>;
  /** The planned modes' reports (`models` query); absent when no plans are served. */
  modePlans?: Record<string, ExecutorModePlan>;
  /** The manifest read or written (absent when the planner did not run or failed). */
  manifestPath?: string;
  /** True when this call calibrated, false when it read a stored manifest (absent when the planner did not run). */
  calibrated?: boolean;
  /** Why the planner failed (L and M are then unavailable with this reason). */
  failure?: string;
}

/**
 * L and M (and S's plan) for a bf16 engine with a cache folder, from the stored manifest or calibrated and stored;
 * other precisions and no cache folder: the unplanned table with its reason. Never throws: a failure leaves L and M
 * unavailable with its message (`failure`), original, XL and S (the fp8 preset) served.
 * @param card what the engine's `info` reported (the manifest is per card)
 */
export async function planCudaModes(
  o: CudaModePlanningOptions,
  model: CudaModel,
  card: CudaEngineInfo,
): Promise<CudaModePlanning> {
  if (!o.cacheDir)
    return {
      modes: cudaModeTable(
        o.precision,
        undefined,
        'no plan cache folder (cacheDir) was given, so the per-layer planner did not run',
      ),
    };
  if (o.precision !== 'bf16') return { modes: cudaModeTable(o.precision) };
  const log = (m: string) => o.onLog?.(m);
  try {
    const id = cudaPlanIdentity(cudaEngineIdentity(o.engineBin, card), model.fingerprint, {
      fp8row: o.fp8row === true,
    });
    const path = cudaPlanManifestPath(o.cacheDir, modelName(model.modelDir), id);
    let manifest = readCudaPlanManifest(path, id, log);
    const calibrated = !manifest;
    if (manifest) {
      log(`cuda planner: using stored plans ${path}`);
    } else {
      log(`cuda planner: calibrating ${model.modelDir} on a separate engine (once per engine build, card and model)`);
      manifest = await calibrate(o, model, id);
      try {
        writeCudaPlanManifest(path, manifest);
        log(`cuda planner: stored ${path}`);
      } catch (err) {
        // The plans are good; only the next start pays the calibration again.
        log(`cuda planner: could not store ${path}: ${(err as Error).message}`);
      }
    }
    const planned = cudaServedModes(manifest);
    const served = Object.entries(planned).map(
      ([mode, s]) =>
        `${mode}: plan ${s.plan}, ${manifest.plans[mode]?.counts.fp8 ?? '?'} fp8` +
        `${manifest.fp8row ? ` and ${manifest.plans[mode]?.counts.fp8row ?? '?'} fp8row` : ''} layers planned, ` +
        (s.stepCache
          ? `step cache threshold ${s.stepCache.threshold}, at most ${s.stepCache.maxConsecutive ?? 1} cached in a row`
          : 'no step caching'),
    );
    log(`cuda planner: serving ${served.join('; ')}${manifest.preset.kept ? ' (S keeps the fp8 preset)' : ''}`);
    return {
      modes: cudaModeTable('bf16', planned),
      modePlans: cudaModePlanReports(manifest, path),
      manifestPath: path,
      calibrated,
    };
  } catch (err) {
    const reason = `the per-layer planner failed: ${(err as Error).message}`;
    log(`cuda planner: ${reason}; serving original, XL and S, L and M unavailable`);
    return { modes: cudaModeTable('bf16', undefined, reason), failure: reason };
  }
}

/** The manifest's model name: the folder's last name. */
function modelName(modelDir: string): string {
  return modelDir.split(/[\\/]/).filter(Boolean).pop() ?? modelDir;
}

/**
 * Calibrates on an engine process of its own (a device fault there ends only that process), then quits it: the
 * fp8 plans on the model loaded without plans, then each mode's step caching on the model reloaded with them (the
 * plans exist only after the first part; a reload costs a load, once per model, and keeps the serving engine out).
 */
async function calibrate(
  o: CudaModePlanningOptions,
  model: CudaModel,
  id: ReturnType<typeof cudaPlanIdentity>,
): Promise<CudaPlanManifest> {
  const cal = CudaEngineClient.start({
    bin: o.engineBin,
    ...(o.env ? { env: o.env } : {}),
    ...(o.onLog ? { onLog: o.onLog } : {}),
  });
  const lora = o.loraMaxMb !== undefined ? { loraMaxMb: o.loraMaxMb } : {};
  try {
    await cal.info();
    await cal.load(model.spec, 'bf16', lora);
    const out = await calibrateCudaModes(cal, cudaCalibrationInputs(model.tokenizers, model.scheduler), o.onLog, {
      fp8row: o.fp8row === true,
    });
    await cal.load(model.spec, 'bf16', { ...lora, plans: cudaLoadPlans(cudaModeTable('bf16', out.served)) });
    const cache = await calibrateCudaStepCache(
      cal,
      cudaStepCacheInputs(model.tokenizers, model.scheduler),
      out.served,
      o.onLog,
    );
    o.onLog?.(`cuda planner: step caching calibrated in ${(cache.ms / 1000).toFixed(1)} s`);
    return {
      format: 'fluxql-cuda-plans',
      ...id,
      created: new Date().toISOString(),
      table: out.calibration,
      plans: out.plans,
      preset: out.preset,
      served: out.served,
      stepCache: cache.modes,
    };
  } finally {
    await cal.quit().catch(() => undefined);
  }
}
