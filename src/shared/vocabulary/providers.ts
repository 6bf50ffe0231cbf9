/** @file The ONNX Runtime execution providers a user may name (PROVIDER, `--provider`). */

/** ORT execution providers a user may name. `cuda` needs ORT's CUDA binaries (`ONNXRUNTIME_NODE_INSTALL=cuda12`). */
export const EXECUTION_PROVIDERS = Object.freeze(['cpu', 'webgpu', 'cuda'] as const);
/** One of {@link EXECUTION_PROVIDERS}. */
export type ExecutionProvider = (typeof EXECUTION_PROVIDERS)[number];
