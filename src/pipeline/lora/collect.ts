/**
 * @file What every format parser shares: read access to the file's tensors, and a collector that records the
 * factors it maps (per diffusers module) and which keys it consumed, so whatever is left over can be named in an
 * `unmatched_keys` error.
 */
import { LoraError } from './errors.ts';
import type { RawPair } from './factor-math.ts';
import type { LoraModelSpec } from './model-layers.ts';
import type { LoraFactor } from './types.ts';

/** The tensors of one LoRA file. */
export interface TensorReader {
  /** File path or name, for messages. */
  readonly label: string;
  readonly metadata: Readonly<Record<string, string>>;
  names(): string[];
  shape(name: string): readonly number[];
  f32(name: string): Float32Array;
}

/** Accumulates one file's mapped factors and consumed keys. */
export class FactorCollector {
  readonly factors = new Map<string, LoraFactor>();
  readonly norms = new Map<string, Float32Array>();
  readonly used = new Set<string>();

  constructor(
    readonly reader: TensorReader,
    readonly spec: LoraModelSpec,
  ) {}

  /** Marks keys as understood. */
  use(...keys: string[]): void {
    for (const k of keys) this.used.add(k);
  }

  /** A 2-D tensor with its shape; `[rows, cols]`. */
  matrix(key: string): { data: Float32Array; rows: number; cols: number } {
    const shape = this.reader.shape(key);
    if (shape.length !== 2) {
      throw new LoraError(
        'shape_mismatch',
        `${key} must be a 2-D matrix, got shape [${shape.join(', ')}]`,
        this.reader.label,
        [key],
      );
    }
    return { data: this.reader.f32(key), rows: shape[0]!, cols: shape[1]! };
  }

  /** A scalar (`alpha`), given as shape `[]` or `[1]`. */
  scalar(key: string): number {
    const v = this.reader.f32(key);
    if (v.length !== 1)
      throw new LoraError('shape_mismatch', `${key} must be a scalar, has ${v.length} values`, this.reader.label, [
        key,
      ]);
    if (!Number.isFinite(v[0]!)) throw new LoraError('non_finite', `${key} is ${v[0]}`, this.reader.label, [key]);
    return v[0]!;
  }

  /**
   * Reads a down/up pair (`down [r, in]`, `up [out, r]`, optional bias `[out]`) after checking the two ranks agree
   * and lie in 1..256 (rank errors first: a rank-0 or rank-512 file says so, whatever else is wrong with it).
   */
  pair(downKey: string, upKey: string, biasKey?: string): RawPair {
    const down = this.matrix(downKey);
    const up = this.matrix(upKey);
    const label = this.reader.label;
    for (const [k, r] of [
      [downKey, down.rows],
      [upKey, up.cols],
    ] as const) {
      if (r < 1 || r > MAX_RANK)
        throw new LoraError('bad_rank', `${k}: rank ${r} is outside 1..${MAX_RANK}`, label, [k]);
    }
    if (down.rows !== up.cols) {
      throw new LoraError('bad_rank', `${downKey} has rank ${down.rows} but ${upKey} has rank ${up.cols}`, label, [
        downKey,
        upKey,
      ]);
    }
    this.use(downKey, upKey);
    let bias: Float32Array | undefined;
    if (biasKey) {
      bias = this.reader.f32(biasKey);
      this.use(biasKey);
      if (bias.length !== up.rows) {
        throw new LoraError(
          'shape_mismatch',
          `${biasKey} has ${bias.length} values, ${upKey} has ${up.rows} rows`,
          label,
          [biasKey],
        );
      }
    }
    return { a: down.data, b: up.data, rank: down.rows, inFeatures: down.cols, outFeatures: up.rows, bias };
  }

  /** Records the factor of `module`; the same module twice in one file is an error. */
  add(module: string, pair: RawPair, scale: number, keys: readonly string[]): void {
    if (!this.spec.linears.has(module)) {
      throw new LoraError(
        'unmatched_keys',
        `targets ${module}, which the model does not have`,
        this.reader.label,
        keys,
      );
    }
    if (this.factors.has(module)) {
      throw new LoraError(
        'unmatched_keys',
        `${module} is targeted twice (${keys.join(', ')})`,
        this.reader.label,
        keys,
      );
    }
    if (!Number.isFinite(scale))
      throw new LoraError('non_finite', `${module}: scale is ${scale}`, this.reader.label, keys);
    this.factors.set(module, { module, ...pair, scale });
  }
}

/** Highest rank accepted per layer of one LoRA (the engine's rank axis is dynamic; this bounds memory and typos). */
export const MAX_RANK = 256;
