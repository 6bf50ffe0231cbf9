/**
 * @file Shared pieces of the LoRA unit tests: the embedded model's LoRA spec, deterministic values, temporary
 * LoRA folders and a small writer for LoRA files.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { loraModelSpec } from '../../src/pipeline/lora/model-layers.ts';
import { type TensorInput, writeSafetensors } from '../../src/shared/weights/index.ts';
import { TINY_CONFIG } from './tiny-config.ts';

export { TINY_CONFIG };
export const TINY_SPEC = loraModelSpec(TINY_CONFIG);
export const D = 32;
export const MLP = 128;

/** Deterministic values in [-1, 1). */
export function noise(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/** An F32 tensor of deterministic values. */
export function t(shape: number[], seed: number): TensorInput {
  return {
    dtype: 'F32',
    shape,
    data: noise(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
  };
}

/** A scalar F32 tensor. */
export function scalar(v: number): TensorInput {
  return { dtype: 'F32', shape: [], data: Float32Array.of(v) };
}

/** A temporary folder per test file, removed afterwards; each call gives a fresh subfolder. */
export function useTempDir(prefix: string): () => string {
  const root = mkdtempSync(join(tmpdir(), `fluxql-${prefix}-`));
  let n = 0;
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  return () => mkdtempSync(join(root, `${n++}-`));
}

/** Writes a LoRA file `name` into `dir`; returns its path. */
export function writeLora(
  dir: string,
  name: string,
  tensors: Record<string, TensorInput>,
  metadata?: Record<string, string>,
): string {
  const path = join(dir, name);
  writeSafetensors(path, tensors, metadata);
  return path;
}

/** `a [rows, k] · b [k, cols]` in float64, rounded to float32. */
export function matmul(a: Float32Array, b: Float32Array, rows: number, k: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let acc = 0;
      for (let x = 0; x < k; x++) acc += a[i * k + x]! * b[x * cols + j]!;
      out[i * cols + j] = acc;
    }
  }
  return out;
}
