/**
 * @file Writes `.safetensors` files: float32 data encoded as F32/F16/BF16, or raw bytes of any dtype.
 *
 * Used by tests (synthetic bf16, sharded and BFL-format files) and by LoRA tooling. Tensors are written one at a
 * time through an fd, so the output never has to exist as one Buffer.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { DTYPE_BYTES, type DType, f32ToBytes } from './dtype.ts';
import { WeightsError } from './errors.ts';

/** A tensor given as float32 values, encoded to `dtype` on write (F16/BF16 round to nearest even). */
export interface FloatTensorInput {
  dtype: 'F32' | 'F16' | 'BF16';
  shape: readonly number[];
  data: Float32Array;
}

/** A tensor given as its raw little-endian bytes, written unchanged. */
export interface RawTensorInput {
  dtype: DType;
  shape: readonly number[];
  data: Uint8Array;
}

/** One tensor to write. */
export type TensorInput = FloatTensorInput | RawTensorInput;

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

function encode(path: string, name: string, t: TensorInput): Uint8Array {
  if (!Object.hasOwn(DTYPE_BYTES, t.dtype))
    throw new WeightsError(path, `tensor '${name}': unknown dtype '${t.dtype}'`);
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new WeightsError(path, `tensor '${name}': shape [${t.shape.join(', ')}] must hold non-negative integers`);
  }
  const numel = t.shape.reduce((a, d) => a * d, 1);
  if (t.data instanceof Float32Array) {
    if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') {
      throw new WeightsError(path, `tensor '${name}': Float32Array data can only be written as F32, F16 or BF16`);
    }
    if (t.data.length !== numel) {
      throw new WeightsError(path, `tensor '${name}': ${t.data.length} values for shape [${t.shape.join(', ')}]`);
    }
    return f32ToBytes(t.dtype, t.data);
  }
  const expected = numel * DTYPE_BYTES[t.dtype];
  if (t.data.byteLength !== expected) {
    throw new WeightsError(
      path,
      `tensor '${name}': ${t.data.byteLength} bytes, ${t.dtype}[${t.shape.join(', ')}] needs ${expected}`,
    );
  }
  return t.data;
}

/**
 * Writes `tensors` (in insertion order) and optional string `metadata` to `path`, replacing any file there.
 * The JSON header is space-padded to a multiple of 8 bytes, as the reference writer does, so data starts aligned.
 *
 * @throws WeightsError naming `path` when a tensor's data does not match its dtype and shape.
 */
export function writeSafetensors(
  path: string,
  tensors: Readonly<Record<string, TensorInput>>,
  metadata?: Readonly<Record<string, string>>,
): void {
  const encoded: [string, TensorInput, Uint8Array][] = [];
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === '__metadata__') throw new WeightsError(path, `'__metadata__' is reserved and cannot name a tensor`);
    const bytes = encode(path, name, t);
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.byteLength] };
    offset += bytes.byteLength;
    encoded.push([name, t, bytes]);
  }
  let json = JSON.stringify(header);
  const jsonBytes = Buffer.byteLength(json, 'utf8');
  json += ' '.repeat((8 - (jsonBytes % 8)) % 8);
  const headerBuf = Buffer.from(json, 'utf8');
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(headerBuf.byteLength));

  const fd = openSync(path, 'w');
  try {
    writeAll(fd, lenBuf);
    writeAll(fd, headerBuf);
    for (const [, , bytes] of encoded) writeAll(fd, bytes);
  } finally {
    closeSync(fd);
  }
}
