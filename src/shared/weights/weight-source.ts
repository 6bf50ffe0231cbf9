/**
 * @file {@link WeightSource}: the one interface consumers read weights through, whatever the storage (one
 * safetensors file, a sharded set, or a BFL checkpoint mapped to diffusers names), and the loader for a diffusers /
 * transformers component folder.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { bytesToF32, isFloatDType } from './dtype.ts';
import { WeightsError } from './errors.ts';
import { openSafetensors, type SafetensorsFile, type TensorInfo } from './safetensors.ts';

/** A named set of tensors read lazily, one tensor at a time. */
export interface WeightSource {
  /** The file (or shard index) this reads; error messages name it. */
  readonly path: string;
  /** Tensor names this source answers to. */
  names(): string[];
  /** Whether `name` is available. */
  has(name: string): boolean;
  /** Dtype, shape and byte size of `name`. @throws WeightsError when absent. */
  info(name: string): TensorInfo;
  /** Raw little-endian bytes of `name` (or of its byte range [begin, end)); aligned, owned memory. */
  readBytes(name: string, begin?: number, end?: number): Buffer;
  /** `name` widened to float32. @throws WeightsError for integer dtypes. */
  readF32(name: string): Float32Array;
  /** Releases file descriptors; idempotent. */
  close(): void;
}

/** Where a component's weights live on disk. */
export interface ComponentFiles {
  /** `single`: one safetensors file; `sharded`: shards listed by an index json. */
  readonly kind: 'single' | 'sharded';
  /** The weight files, in a stable order (shards in index order of first appearance, then by name). */
  readonly files: readonly string[];
  /** The `*.safetensors.index.json` file, for sharded sets. */
  readonly indexPath?: string;
}

/** Base names in the order diffusers (`diffusion_pytorch_model`) and transformers (`model`) look for them. */
const PREFERRED_STEMS = ['diffusion_pytorch_model', 'model'];

/** Parses a shard index: `{"metadata": {...}, "weight_map": {name: shardFile}}`. */
function readIndex(indexPath: string): Map<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new WeightsError(indexPath, `cannot read shard index: ${(err as Error).message}`, { cause: err });
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new WeightsError(indexPath, 'shard index has no "weight_map" object');
  }
  const out = new Map<string, string>();
  for (const [name, shard] of Object.entries(map)) {
    // A shard must be a plain file name beside the index: reject paths so the index cannot point elsewhere.
    if (typeof shard !== 'string' || shard !== basename(shard) || !shard.endsWith('.safetensors')) {
      throw new WeightsError(
        indexPath,
        `weight_map['${name}'] must be a .safetensors file name, got ${JSON.stringify(shard)}`,
      );
    }
    out.set(name, shard);
  }
  return out;
}

function sharded(dir: string, indexName: string): ComponentFiles {
  const indexPath = join(dir, indexName);
  const shards = [...new Set(readIndex(indexPath).values())];
  return { kind: 'sharded', indexPath, files: shards.map((s) => join(dir, s)) };
}

/**
 * Finds the weights of a component folder without opening them. Preference, as diffusers/transformers do:
 * `diffusion_pytorch_model.safetensors`, its `.index.json`, `model.safetensors`, its `.index.json`; otherwise the only
 * `*.safetensors.index.json` or the only `*.safetensors` file.
 *
 * @throws WeightsError naming `dir` when it is missing, holds no weights, or holds several candidates.
 */
export function locateComponentWeights(dir: string): ComponentFiles {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new WeightsError(dir, 'component folder not found');
  const entries = new Set(readdirSync(dir));
  for (const stem of PREFERRED_STEMS) {
    if (entries.has(`${stem}.safetensors`)) return { kind: 'single', files: [join(dir, `${stem}.safetensors`)] };
    if (entries.has(`${stem}.safetensors.index.json`)) return sharded(dir, `${stem}.safetensors.index.json`);
  }
  const indexes = [...entries].filter((f) => f.endsWith('.safetensors.index.json')).sort();
  if (indexes.length === 1) return sharded(dir, indexes[0]!);
  const singles = [...entries].filter((f) => f.endsWith('.safetensors')).sort();
  if (indexes.length === 0 && singles.length === 1) return { kind: 'single', files: [join(dir, singles[0]!)] };
  if (indexes.length === 0 && singles.length === 0) {
    throw new WeightsError(dir, 'no *.safetensors weights or *.safetensors.index.json in component folder');
  }
  throw new WeightsError(dir, `ambiguous weights, found: ${[...indexes, ...singles].join(', ')}`);
}

/** A sharded set: each name is served by the shard its index entry points to. */
class ShardedSource implements WeightSource {
  readonly #shards: Map<string, SafetensorsFile>;
  readonly #byName: Map<string, SafetensorsFile>;

  constructor(
    readonly path: string,
    weightMap: Map<string, string>,
    dir: string,
  ) {
    this.#shards = new Map();
    this.#byName = new Map();
    try {
      for (const [name, shard] of weightMap) {
        let file = this.#shards.get(shard);
        if (!file) {
          const shardPath = join(dir, shard);
          if (!existsSync(shardPath)) throw new WeightsError(shardPath, `shard listed in ${path} is missing`);
          file = openSafetensors(shardPath);
          this.#shards.set(shard, file);
        }
        if (!file.has(name)) throw new WeightsError(file.path, `does not hold '${name}' although ${path} maps it here`);
        this.#byName.set(name, file);
      }
    } catch (err) {
      this.close();
      throw err;
    }
  }

  names(): string[] {
    return [...this.#byName.keys()];
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  info(name: string): TensorInfo {
    return this.#file(name).info(name);
  }

  readBytes(name: string, begin?: number, end?: number): Buffer {
    return this.#file(name).readBytes(name, begin, end);
  }

  readF32(name: string): Float32Array {
    return this.#file(name).readF32(name);
  }

  close(): void {
    for (const f of this.#shards.values()) f.close();
  }

  #file(name: string): SafetensorsFile {
    const f = this.#byName.get(name);
    if (!f) throw new WeightsError(this.path, `no tensor named '${name}'`);
    return f;
  }
}

/** Opens the weights that {@link locateComponentWeights} found. */
export function openComponentFiles(files: ComponentFiles): WeightSource {
  if (files.kind === 'single') return openSafetensors(files.files[0]!);
  const indexPath = files.indexPath!;
  return new ShardedSource(indexPath, readIndex(indexPath), join(indexPath, '..'));
}

/**
 * Opens the weights of a diffusers/transformers component folder (`transformer/`, `vae/`, `text_encoder/` ...):
 * one safetensors file or a sharded set behind a `*.safetensors.index.json`.
 *
 * @throws WeightsError naming the folder, index or shard on a missing folder, no weights, or a missing shard.
 */
export function openComponentWeights(dir: string): WeightSource {
  return openComponentFiles(locateComponentWeights(dir));
}

/**
 * Widens raw bytes read from `source` to float32, or throws a WeightsError for integer dtypes. For sources that
 * assemble a tensor from pieces (see `mapped-source.ts`).
 */
export function readF32Via(source: WeightSource, name: string): Float32Array {
  const { dtype } = source.info(name);
  if (!isFloatDType(dtype)) {
    throw new WeightsError(source.path, `tensor '${name}' has integer dtype ${dtype}; use readBytes for raw access`);
  }
  return bytesToF32(dtype, source.readBytes(name));
}
