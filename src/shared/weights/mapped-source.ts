/**
 * @file A {@link WeightSource} that renames, slices and reorders the tensors of another source, lazily.
 *
 * Every mapping the loader needs (BFL → diffusers, text-encoder prefixes) is a rename plus, at most, a choice of
 * row ranges along dim 0: splitting a fused qkv `[3h, h]` into three `[h, h]`, or swapping the two halves of a
 * modulation `[2h, h]`. Rows of a row-major tensor are contiguous bytes, so a mapped tensor is a list of byte ranges
 * of the source tensor, read on demand: splitting a fused weight never reads the parts that are not asked for.
 */
import { DTYPE_BYTES } from './dtype.ts';
import { WeightsError } from './errors.ts';
import type { TensorInfo } from './safetensors.ts';
import { readF32Via, type WeightSource } from './weight-source.ts';

/** How one exposed tensor is made from a tensor of the base source. */
export interface MappedTensor {
  /** Name of the tensor in the base source. */
  readonly source: string;
  /** Row ranges `[start, end)` along dim 0 of the source, concatenated in order. Absent: the whole tensor. */
  readonly rows?: readonly (readonly [number, number])[];
  /** Shape to report instead of the source's (same element count), e.g. to squeeze `[C, C, 1, 1]` to `[C, C]`. */
  readonly shape?: readonly number[];
}

interface Resolved {
  readonly info: TensorInfo;
  readonly source: string;
  /** Byte ranges of the source tensor, in output order. */
  readonly ranges: readonly (readonly [number, number])[];
}

class MappedSource implements WeightSource {
  readonly #base: WeightSource;
  readonly #map: Map<string, Resolved>;

  constructor(base: WeightSource, map: ReadonlyMap<string, MappedTensor>) {
    this.#base = base;
    this.#map = new Map();
    for (const [name, m] of map) this.#map.set(name, this.#resolve(name, m));
  }

  get path(): string {
    return this.#base.path;
  }

  names(): string[] {
    return [...this.#map.keys()];
  }

  has(name: string): boolean {
    return this.#map.has(name);
  }

  info(name: string): TensorInfo {
    return this.#get(name).info;
  }

  readBytes(name: string, begin = 0, end?: number): Buffer {
    const r = this.#get(name);
    const stop = end ?? r.info.byteLength;
    if (begin < 0 || stop < begin || stop > r.info.byteLength) {
      throw new WeightsError(
        this.path,
        `tensor '${name}': byte range [${begin}, ${stop}) outside [0, ${r.info.byteLength})`,
      );
    }
    // Translate [begin, stop) of the output into pieces of the source's byte ranges.
    const pieces: [number, number][] = [];
    let outPos = 0;
    for (const [a, b] of r.ranges) {
      const lo = Math.max(begin, outPos);
      const hi = Math.min(stop, outPos + (b - a));
      if (lo < hi) pieces.push([a + lo - outPos, a + hi - outPos]);
      outPos += b - a;
    }
    if (pieces.length === 1) return this.#base.readBytes(r.source, pieces[0]![0], pieces[0]![1]);
    const out = Buffer.allocUnsafeSlow(stop - begin);
    let at = 0;
    for (const [a, b] of pieces) {
      this.#base.readBytes(r.source, a, b).copy(out, at);
      at += b - a;
    }
    return out;
  }

  readF32(name: string): Float32Array {
    return readF32Via(this, name);
  }

  close(): void {
    this.#base.close();
  }

  #get(name: string): Resolved {
    const r = this.#map.get(name);
    if (!r) throw new WeightsError(this.path, `no tensor named '${name}'`);
    return r;
  }

  #resolve(name: string, m: MappedTensor): Resolved {
    const src = this.#base.info(m.source);
    const rowCount = src.shape[0] ?? 1;
    const rowBytes = rowCount === 0 ? 0 : src.byteLength / rowCount;
    const rows = m.rows ?? [[0, rowCount]];
    let total = 0;
    for (const [a, b] of rows) {
      if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a <= b && b <= rowCount)) {
        throw new WeightsError(this.path, `'${name}': rows [${a}, ${b}) of '${m.source}' outside its ${rowCount} rows`);
      }
      total += b - a;
    }
    const shape = m.shape ?? (src.shape.length === 0 ? [] : [total, ...src.shape.slice(1)]);
    const byteLength = shape.reduce((x, d) => x * d, 1) * DTYPE_BYTES[src.dtype];
    if (byteLength !== total * rowBytes) {
      throw new WeightsError(
        this.path,
        `'${name}': shape [${shape.join(', ')}] does not match ${total} rows of '${m.source}'`,
      );
    }
    return {
      info: { dtype: src.dtype, shape: Object.freeze([...shape]), byteLength },
      source: m.source,
      ranges: rows.map(([a, b]) => [a * rowBytes, b * rowBytes] as const),
    };
  }
}

/**
 * Wraps `base` so it answers to the names of `map` only. The result owns `base` (closing it closes `base`).
 *
 * @throws WeightsError when a mapped tensor is missing from `base` or its rows/shape do not fit.
 */
export function createMappedSource(base: WeightSource, map: ReadonlyMap<string, MappedTensor>): WeightSource {
  return new MappedSource(base, map);
}
