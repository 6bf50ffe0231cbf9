/**
 * @file The CUDA planner's manifest: one calibration's table and plans, stored under the engine cache
 * (`<cacheDir>/cuda-plans/<model>-<key>.json`) so later loads of the same model on the same engine build and card
 * serve L and M without calibrating again.
 *
 * The key hashes everything the plans depend on: the planner version, the engine's identity (a hash of its
 * executable plus the card, CUDA runtime and compute capability: the layer times are the card's, and another build
 * may quantise or pick kernels differently), the model's fingerprint (its weight files' headers, sizes and configs:
 * `fingerprint.ts`), the calibration inputs and the budgets. The file repeats the identity fields and a reader
 * refuses a file whose fields differ, so a file copied or renamed by hand is not trusted either.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CudaEngineInfo } from '../runtime/cuda/index.ts';
import type { ComponentWeights } from '../shared/weights/index.ts';
import { CUDA_CALIBRATION, CUDA_PLANNER_VERSION, type CudaPresetCheck } from './cuda-calibration.ts';
import type { CudaPlannedModes } from './cuda-modes.ts';
import { type CudaCalibration, type CudaModePlan, cudaPlannedBudgets } from './cuda-planner.ts';

/** What a manifest is valid for. */
export interface CudaPlanIdentity {
  planner: string;
  /** {@link cudaEngineIdentity}. */
  engine: string;
  /** {@link cudaModelFingerprint}. */
  model: string;
  calibration: typeof CUDA_CALIBRATION;
  budgets: Record<string, number>;
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
  /** Plan name and rules served per mode. */
  served: CudaPlannedModes;
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

/** The identity of a calibration on `engine` for `model` with today's planner, inputs and budgets. */
export function cudaPlanIdentity(engine: string, model: string): CudaPlanIdentity {
  return { planner: CUDA_PLANNER_VERSION, engine, model, calibration: CUDA_CALIBRATION, budgets: cudaPlannedBudgets() };
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
  const differs = (['planner', 'engine', 'model', 'calibration', 'budgets'] as const).filter(
    (k) => JSON.stringify(m[k]) !== JSON.stringify(id[k]),
  );
  const servedOk = ['L', 'M', 'S'].every((k) => {
    const s = (m.served as unknown as Record<string, { plan?: unknown; rules?: unknown }> | undefined)?.[k];
    return typeof s?.plan === 'string' && typeof s.rules === 'string';
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
