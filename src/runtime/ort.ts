/**
 * @file `ort()`: onnxruntime-node, loaded on first use rather than at import. Importing the package loads its
 * native library (45 MB); a server on the native CUDA engine imports this layer's types and errors but never runs
 * an ONNX session, so it starts without that library (the GPU machines get a Node bundle without it:
 * engines/cuda/scripts/pack-node.sh). CommonJS package, so a synchronous require keeps every caller synchronous.
 */
import { createRequire } from 'node:module';
import type Ort from 'onnxruntime-node';

let loaded: typeof Ort | undefined;

/** The onnxruntime-node module (loaded, with its native binding, on the first call). */
export function ort(): typeof Ort {
  loaded ??= createRequire(import.meta.url)('onnxruntime-node') as typeof Ort;
  return loaded;
}
