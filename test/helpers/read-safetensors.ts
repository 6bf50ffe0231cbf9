/**
 * @file A minimal F32-only safetensors reader for tests, so numeric tests do not depend on the production weight
 * reader. Layout: 8-byte little-endian header length, JSON header `{name: {dtype, shape, data_offsets}}`, raw data.
 */
import { readFileSync } from 'node:fs';

/** One float32 tensor read from a safetensors file. */
export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

/** Reads every F32 tensor of `path` by name; throws on any other dtype. */
export function readSafetensorsF32(path: string): Record<string, F32Tensor> {
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out: Record<string, F32Tensor> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') throw new Error(`${path}: tensor ${name} is ${info.dtype}, expected F32`);
    const [a, b] = info.data_offsets;
    // Copy: the data section is not necessarily 4-byte aligned inside the file buffer.
    const bytes = buf.subarray(8 + headerLen + a, 8 + headerLen + b);
    const data = new Float32Array(new Uint8Array(bytes).buffer);
    out[name] = { shape: info.shape, data };
  }
  return out;
}
