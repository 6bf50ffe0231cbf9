/**
 * @file A validating, lazy reader for `.safetensors` files.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON (`{"__metadata__": {string: string},
 * name: {dtype, shape, data_offsets: [begin, end]}}`, offsets relative to the data region), then the raw data.
 * FLUX.1-dev shards are ~10 GB, so the file is never read whole: {@link openSafetensors} reads and validates the header
 * only, and each tensor is read at its offset on demand with positioned `readSync` calls on an open fd.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import { bytesToF32, DTYPE_BYTES, type DType, isDType, isFloatDType } from './dtype.ts';
import { WeightsError } from './errors.ts';
import type { WeightSource } from './weight-source.ts';

/** Shape and size of one stored tensor. */
export interface TensorInfo {
  /** Element type as stored. */
  readonly dtype: DType;
  /** Dimensions, outermost first (row-major). */
  readonly shape: readonly number[];
  /** Size of the stored data in bytes (elements × dtype size). */
  readonly byteLength: number;
}

/**
 * An open safetensors file: a {@link WeightSource} (names in header order; reads are synchronous and positioned and
 * throw after `close`), plus its header. Call {@link SafetensorsFile.close} when done.
 */
export interface SafetensorsFile extends WeightSource {
  /** The `__metadata__` string map (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Size of the whole file in bytes. */
  readonly fileSize: number;
  /** The raw header: the 8 length bytes followed by the JSON (what fingerprints hash). */
  readonly headerBytes: Buffer;
}

interface Entry extends TensorInfo {
  /** Absolute file position of the tensor's first byte. */
  readonly position: number;
}

/** Upper bound on header size, as in the reference implementation: a larger value means a corrupt file. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Reads exactly `length` bytes at `position` into `target` at `offset`; a short read (file shrank) is an error. */
export function readFully(
  fd: number,
  path: string,
  target: Uint8Array,
  offset: number,
  length: number,
  position: number,
) {
  let done = 0;
  while (done < length) {
    // One read(2) returns at most ~2 GiB on Linux, so large ranges take several calls.
    const n = readSync(fd, target, offset + done, length - done, position + done);
    if (n === 0) throw new WeightsError(path, `unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseEntry(path: string, name: string, raw: unknown, dataStart: number, dataSize: number): Entry {
  const where = `tensor '${name}'`;
  if (!isPlainObject(raw)) throw new WeightsError(path, `${where}: header entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== 'string') throw new WeightsError(path, `${where}: missing dtype`);
  if (!isDType(dtype)) {
    throw new WeightsError(
      path,
      `${where}: unknown dtype '${dtype}' (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new WeightsError(path, `${where}: shape must be an array of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    throw new WeightsError(path, `${where}: data_offsets must be [begin, end] with 0 <= begin <= end`);
  }
  const [begin, end] = offsets as [number, number];
  if (end > dataSize) {
    throw new WeightsError(
      path,
      `${where}: data_offsets [${begin}, ${end}] lie outside the ${dataSize}-byte data region`,
    );
  }
  const dims = shape as number[];
  const byteLength = dims.reduce((a, d) => a * d, 1) * DTYPE_BYTES[dtype];
  if (end - begin !== byteLength) {
    throw new WeightsError(
      path,
      `${where}: data_offsets span ${end - begin} bytes but ${dtype}[${dims.join(', ')}] needs ${byteLength}`,
    );
  }
  return { dtype, shape: Object.freeze([...dims]), byteLength, position: dataStart + begin };
}

function parseMetadata(path: string, raw: unknown): Record<string, string> {
  if (raw === undefined) return {};
  if (!isPlainObject(raw)) throw new WeightsError(path, '__metadata__ is not an object');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw new WeightsError(path, `__metadata__.${k} is not a string`);
    out[k] = v;
  }
  return Object.freeze(out);
}

class SafetensorsReader implements SafetensorsFile {
  #fd: number | undefined;
  readonly #entries: Map<string, Entry>;

  constructor(
    readonly path: string,
    fd: number,
    readonly fileSize: number,
    readonly headerBytes: Buffer,
    readonly metadata: Readonly<Record<string, string>>,
    entries: Map<string, Entry>,
  ) {
    this.#fd = fd;
    this.#entries = entries;
  }

  names(): string[] {
    return [...this.#entries.keys()];
  }

  has(name: string): boolean {
    return this.#entries.has(name);
  }

  info(name: string): TensorInfo {
    const e = this.#entry(name);
    return { dtype: e.dtype, shape: e.shape, byteLength: e.byteLength };
  }

  readBytes(name: string, begin = 0, end?: number): Buffer {
    const e = this.#entry(name);
    const stop = end ?? e.byteLength;
    if (
      !Number.isSafeInteger(begin) ||
      !Number.isSafeInteger(stop) ||
      begin < 0 ||
      stop < begin ||
      stop > e.byteLength
    ) {
      throw new WeightsError(
        this.path,
        `tensor '${name}': byte range [${begin}, ${stop}) outside [0, ${e.byteLength})`,
      );
    }
    if (this.#fd === undefined) throw new WeightsError(this.path, `read of '${name}' after close()`);
    // allocUnsafeSlow: never a slice of the shared pool, so byteOffset is 0 and views are aligned.
    const buf = Buffer.allocUnsafeSlow(stop - begin);
    readFully(this.#fd, this.path, buf, 0, stop - begin, e.position + begin);
    return buf;
  }

  readF32(name: string): Float32Array {
    const e = this.#entry(name);
    if (!isFloatDType(e.dtype)) {
      throw new WeightsError(this.path, `tensor '${name}' has integer dtype ${e.dtype}; use readBytes for raw access`);
    }
    return bytesToF32(e.dtype, this.readBytes(name));
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }

  #entry(name: string): Entry {
    const e = this.#entries.get(name);
    if (!e) throw new WeightsError(this.path, `no tensor named '${name}'`);
    return e;
  }
}

/**
 * Opens a safetensors file and validates its header: length within the file, JSON object, known dtypes, offsets
 * inside the data region, byte counts equal to dtype × shape, and no two tensors overlapping.
 *
 * @throws WeightsError naming `path` on any I/O or format problem.
 */
export function openSafetensors(path: string): SafetensorsFile {
  if (endianness() !== 'LE')
    throw new WeightsError(path, 'safetensors data is little-endian; big-endian hosts are unsupported');
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new WeightsError(path, `cannot open: ${(err as Error).message}`, { cause: err });
  }
  try {
    const fileSize = fstatSync(fd).size;
    if (fileSize < 8)
      throw new WeightsError(path, `truncated: ${fileSize} bytes, too short for the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    readFully(fd, path, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(fileSize - 8)) {
      throw new WeightsError(
        path,
        `header length ${headerLen} exceeds the ${fileSize - 8} bytes after it (truncated or not safetensors)`,
      );
    }
    if (headerLen > BigInt(MAX_HEADER_BYTES))
      throw new WeightsError(path, `header length ${headerLen} is implausibly large`);
    const n = Number(headerLen);
    const headerBytes = Buffer.alloc(8 + n);
    lenBuf.copy(headerBytes, 0);
    readFully(fd, path, headerBytes, 8, n, 8);

    let json: unknown;
    try {
      json = JSON.parse(headerBytes.toString('utf8', 8));
    } catch (err) {
      throw new WeightsError(path, `header is not valid JSON: ${(err as Error).message}`, { cause: err });
    }
    if (!isPlainObject(json)) throw new WeightsError(path, 'header JSON is not an object');

    const dataStart = 8 + n;
    const dataSize = fileSize - dataStart;
    const entries = new Map<string, Entry>();
    for (const [name, raw] of Object.entries(json)) {
      if (name === '__metadata__') continue;
      entries.set(name, parseEntry(path, name, raw, dataStart, dataSize));
    }
    // Overlap check: sort by start; each tensor must begin at or after the previous one's end.
    const sorted = [...entries.entries()].sort((a, b) => a[1].position - b[1].position);
    for (let i = 1; i < sorted.length; i++) {
      const [prevName, prev] = sorted[i - 1]!;
      const [name, cur] = sorted[i]!;
      if (cur.position < prev.position + prev.byteLength) {
        throw new WeightsError(path, `tensors '${prevName}' and '${name}' overlap in the data region`);
      }
    }
    return new SafetensorsReader(path, fd, fileSize, headerBytes, parseMetadata(path, json.__metadata__), entries);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
