/**
 * @file The elastic modes a model can be compiled in, and what each changes in the build.
 *
 * - `original`: exactly the diffusers computation in float32.
 * - `XL`: the mathematically equivalent optimised graph: fused projections (fewer, larger GEMMs), contrib-op attention
 *   and one GEMM for all modulations (`engines/compiler/flux/transformer-fused.ts`), run once per sample over all its steps
 *   (`precomputedModulation`).
 * - `L`, `M`, `S`: XL plus per-layer compression chosen by the planner (`engines/compiler/planner/`) under an error budget (relative
 *   L2 error of the transformer output against `original` on calibration inputs: 1 %, 1.5 %, 2 %); `S` adds step
 *   caching (First-Block-Cache, `engines/compiler/flux/transformer-split.ts`) with its own threshold.
 *
 * The one list of modes: the config (MODEL_SIZE), the CLI, the catalogue, the compiler and the benchmarks read it.
 */

/** The elastic modes, slowest (the reference) first and fastest last. */
const MODE_LIST = ['original', 'XL', 'L', 'M', 'S'] as const;
/** One of the elastic modes. */
export type ModeName = (typeof MODE_LIST)[number];

/** The reference mode: the exact diffusers computation, and the default. */
export const REFERENCE_MODE: string = MODE_LIST[0];

/** A mode's lower-case size token, as model ids (`flux-1-dev-xl-bs4`) and MODEL_SIZE spell it. */
export function sizeOfMode(mode: string): string {
  return mode.toLowerCase();
}

/** Every size token, in mode order. */
export const MODE_SIZES = Object.freeze(MODE_LIST.map(sizeOfMode)) as readonly Lowercase<ModeName>[];

/** Transformer graph switches of one mode (JSON-serialisable: they are part of the compile cache key). */
export interface ModeTransformerOptions {
  fuseProjections: boolean;
  fusedAttention?: boolean;
  precomputeModulation?: boolean;
}

/** Build options of one mode. */
export interface ModeSpec {
  name: string;
  description: string;
  /** Options passed to the transformer graph builder. */
  transformer: ModeTransformerOptions;
  /** Planned modes: the planner's budget on the relative output error against `original`. */
  errorBudget?: number;
  /**
   * Step caching: skip the transformer's tail when the first block's residual changed by less than `threshold`
   * (mean |Δ| / mean |prev|) since the last full step; at most `maxConsecutive` skips in a row, never on the first
   * `warmupSteps` steps. `threshold` is the default; the pipeline calibrates it per model on first load: the largest
   * candidate whose images stay within `minPsnr` dB of the same engine without skipping (`step-cache-calibration.ts`).
   */
  stepCache?: { threshold: number; warmupSteps: number; maxConsecutive: number; minPsnr: number };
  /**
   * XL: the modulation vectors of all of a sample's steps are computed once, before its denoising loop, by the extra
   * component `transformer_modulation` (one GEMM over `[steps·B, D]` rows); the transformer graph takes them as the
   * input `modulation` (`modulationInput`, see `engines/compiler/flux/transformer-fused.ts`). Not for LoRA engines.
   */
  precomputedModulation?: boolean;
}

const XL_GRAPH: ModeTransformerOptions = { fuseProjections: true, fusedAttention: true, precomputeModulation: true };

// Keyed by the mode list: a mode added there without its build spec here fails to compile.
const MODES: Readonly<Record<ModeName, ModeSpec>> = Object.freeze({
  original: {
    name: 'original',
    description: 'Reference graph: exactly the diffusers computation in float32.',
    transformer: { fuseProjections: false },
  },
  XL: {
    name: 'XL',
    description: 'Mathematically equivalent, optimised: fused projections, fused attention, precomputed modulation.',
    transformer: XL_GRAPH,
    precomputedModulation: true,
  },
  L: {
    name: 'L',
    description: 'XL with per-layer int8/int4 compression planned under 1% output error.',
    transformer: XL_GRAPH,
    errorBudget: 0.01,
  },
  M: {
    name: 'M',
    description: 'XL with per-layer int8/int4 compression planned under 1.5% output error.',
    transformer: XL_GRAPH,
    errorBudget: 0.015,
  },
  S: {
    name: 'S',
    description: 'XL with per-layer compression planned under 2% output error, plus First-Block-Cache step caching.',
    transformer: XL_GRAPH,
    errorBudget: 0.02,
    stepCache: { threshold: 0.1, warmupSteps: 1, maxConsecutive: 1, minPsnr: 30 },
  },
});

/** Names of the modes, slowest (the reference) first. */
export const MODE_NAMES: readonly string[] = Object.freeze([...MODE_LIST]);

/** A mode name that is not known. */
export class UnknownModeError extends Error {
  readonly param = 'mode';
  constructor(readonly mode: string) {
    super(`unknown mode "${mode}"; available modes: ${MODE_NAMES.join(', ')}`);
    this.name = 'UnknownModeError';
  }
}

/** A known mode that a model does not offer (not compiled for it, or not available on its configuration). */
export class ModeUnavailableError extends Error {
  readonly param = 'mode';
  constructor(
    readonly mode: string,
    readonly model: string,
    readonly available: readonly string[],
  ) {
    super(`mode "${mode}" is not available for model ${model}; its modes: ${available.join(', ')}`);
    this.name = 'ModeUnavailableError';
  }
}

/** The spec of `name` (case-sensitive, as the API spells modes). */
export function resolveMode(name: string): ModeSpec {
  const m = (MODES as Readonly<Record<string, ModeSpec | undefined>>)[name];
  if (!m) throw new UnknownModeError(name);
  return m;
}

/**
 * The spec of `name` for a model offering `available` modes.
 * @throws UnknownModeError for a name no model has; ModeUnavailableError for a known mode the model lacks.
 */
export function resolveModeFor(name: string, model: string, available: readonly string[]): ModeSpec {
  const m = resolveMode(name);
  if (!available.includes(name)) throw new ModeUnavailableError(name, model, available);
  return m;
}

/** True when the mode's transformer comes from a per-layer plan. */
export function isPlannedMode(m: ModeSpec): boolean {
  return m.errorBudget !== undefined;
}
