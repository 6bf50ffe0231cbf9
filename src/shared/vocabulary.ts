/**
 * @file The words every layer (and the build-time compiler in `engines/compiler`) shares: the elastic modes and the
 * ONNX Runtime execution providers. One list each, so the config, the CLI, the catalogue, the compiler and the
 * benchmarks cannot disagree; what a mode *builds* stays in `engines/compiler/modes.ts`.
 */

/** The elastic modes, slowest (the reference) first and fastest last. */
export const MODE_NAMES = Object.freeze(['original', 'XL', 'L', 'M', 'S'] as const);
/** One of {@link MODE_NAMES}. */
export type ModeName = (typeof MODE_NAMES)[number];
/** The reference mode: the exact diffusers computation, and the default (typed `string`: modes arrive as text). */
export const REFERENCE_MODE: string = MODE_NAMES[0];

/** A mode's lower-case size token, as model ids (`flux-1-dev-xl-bs4`) and MODEL_SIZE spell it. */
export function sizeOfMode(mode: string): string {
  return mode.toLowerCase();
}

/** Every size token, in {@link MODE_NAMES} order. */
export const MODE_SIZES = Object.freeze(MODE_NAMES.map(sizeOfMode)) as readonly Lowercase<ModeName>[];

/** ORT execution providers a user may name. `cuda` needs ORT's CUDA binaries (`ONNXRUNTIME_NODE_INSTALL=cuda12`). */
export const EXECUTION_PROVIDERS = Object.freeze(['cpu', 'webgpu', 'cuda'] as const);
/** One of {@link EXECUTION_PROVIDERS}. */
export type ExecutionProvider = (typeof EXECUTION_PROVIDERS)[number];
