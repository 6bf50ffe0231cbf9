/**
 * @file The model catalogue: which `flux-1-dev-<size>-bs<batch>` ids this server answers to, their limits and
 * published/measured speed. Built once from the executor's {@link ModelInfo} and the config.
 */
import { sizeOfMode } from '../shared/vocabulary/index.ts';
import { UnknownModelError } from './errors.ts';
import type { ModePlanSummary, ModeQuality, ModeResults } from './mode-results.ts';
import { MODE_DESCRIPTIONS, type PublishedLatency, publishedLatencies } from './model-specs.ts';
import {
  type BenchmarkLatency,
  type ExecutorCapabilities,
  type ExecutorModePlan,
  LORA_FORMATS,
  MAX_LORA_RANK,
  type ModelInfo,
} from './pipeline.ts';

/** Request limits every mode shares. */
export interface GenerationLimits {
  /** Smallest width/height in pixels. @default 64 */
  minSide: number;
  /** Largest width/height in pixels (the seed card's 1280). @default 1280 */
  maxSide: number;
  /** Width and height must be multiples of this (VAE factor × patch size). @default 16 */
  sideMultiple: number;
  /** @default 1 */
  minSteps: number;
  /** @default 100 */
  maxSteps: number;
  /** Images per request; the batch size, since one job's samples run in one batch. */
  maxImages: number;
  /** Prompt length in characters. @default 10000 */
  maxPromptChars: number;
  /** @default 0 */
  minGuidance: number;
  /** @default 30 */
  maxGuidance: number;
  /**
   * Size of a request that names none: the model's native size ({@link NATIVE_SIDES}), else FLUX.1-dev's 1024
   * (the `1:1` aspect ratio). @default 1024
   */
  defaultWidth: number;
  /** @default 1024 */
  defaultHeight: number;
}

/**
 * Native (trained) square side of the models known by name: flux-mini is trained at 256x256 (models/flux-mini,
 * tools/train-mini). Every other model, FLUX.1-dev included, defaults to 1024x1024.
 */
export const NATIVE_SIDES: Readonly<Record<string, number>> = Object.freeze({ 'flux-mini': 256 });

/** One servable (model, mode) pair. */
export interface ModelEntry {
  /** `flux-1-dev-<size>-bs<batch>`, the name used in `X-Model-Name` and OpenAI's `model`. */
  id: string;
  /** The mode as the executor names it, e.g. `original`. */
  mode: string;
  /** Lower-case size token of the id: `s`, `m`, `l`, `xl` or `original`. */
  size: string;
  /** Loaded weights, e.g. `flux-tiny`. */
  modelName: string;
  description: string;
  /** Execution provider, e.g. `cpu`. */
  device: string;
  /** Samples per engine batch (MODEL_BATCH). */
  batchSize: number;
  /** Whether requests without a model go here (MODEL_SIZE). */
  isDefault: boolean;
  /** The seed card's numbers for this tier; empty when the card has no column for it. */
  published: PublishedLatency[];
  /** Latencies the engine's own benchmark measured for this mode (CUDA engine); empty for ORT. */
  benchmarks: BenchmarkLatency[];
  /** Latency rows of the mode benchmark (`bench/results/modes.json`) for this model and mode; empty without. */
  modeBenchmarks: BenchmarkLatency[];
  /** Quality against `original` recorded by the mode benchmark; null without. */
  quality: ModeQuality | null;
  /**
   * The compression planner's summary: recorded by the mode benchmark (ONNX), or the executor's own plan measured on
   * the loaded model (CUDA: fp8 layers and calibrated step caching); null for unplanned modes or without.
   */
  plan: ModePlanSummary | null;
  limits: GenerationLimits;
  /** Smallest and largest LoRA rank the engine takes (per layer). */
  loraRanks: number[];
  /** LoRA file formats recognised (`bfl-control` needs a control-capable engine). */
  loraFormats: string[];
}

/** Default limits; `maxImages` comes from the batch size. */
export const DEFAULT_LIMITS: Omit<GenerationLimits, 'maxImages'> = Object.freeze({
  minSide: 64,
  maxSide: 1280,
  sideMultiple: 16,
  minSteps: 1,
  maxSteps: 100,
  maxPromptChars: 10_000,
  minGuidance: 0,
  maxGuidance: 30,
  defaultWidth: 1024,
  defaultHeight: 1024,
});

/** An executor's own plan of a mode as the catalogue shows it (no per-layer rows: those are the ONNX engines'). */
function ownPlan(p: ExecutorModePlan | undefined): ModePlanSummary | null {
  if (!p) return null;
  return {
    errorBudget: p.errorBudget,
    measuredError: p.measuredError,
    algorithms: p.algorithms.map((a) => ({ ...a })),
    stepCache: p.stepCache ? { ...p.stepCache } : null,
    source: p.source,
    layers: [],
  };
}

/** The public id of a mode at a batch size. */
export function modelId(mode: string, batch: number): string {
  return `flux-1-dev-${sizeOfMode(mode)}-bs${batch}`;
}

/** Looks up models by id, mode or alias. */
export class ModelCatalog {
  readonly entries: readonly ModelEntry[];
  readonly default: ModelEntry;
  /** What the engines run; requests are checked against it (`GenerationService.submit`). */
  readonly capabilities: ExecutorCapabilities;

  constructor(
    info: ModelInfo,
    options: {
      batchSize: number;
      defaultSize: string;
      limits?: Partial<GenerationLimits>;
      /** The mode benchmark's results (`bench/results/modes.json`), looked up by `info.name`. */
      modeResults?: ModeResults;
    },
  ) {
    const native = NATIVE_SIDES[info.name];
    const configured: GenerationLimits = {
      ...DEFAULT_LIMITS,
      ...(native ? { defaultWidth: native, defaultHeight: native } : {}),
      maxImages: options.batchSize,
      ...options.limits,
    };
    // The engine's declared capabilities cap the configured limits (e.g. a largest side).
    const limits: GenerationLimits = {
      ...configured,
      maxSide: Math.min(configured.maxSide, info.capabilities.maxSide),
    };
    const caps = info.capabilities;
    this.capabilities = caps;
    this.entries = caps.modes.map((mode) => {
      // bench/results/modes.json holds ONNX Runtime's modes: the CUDA engine's modes are other computations.
      const recorded = info.engine === 'onnx' ? options.modeResults?.forMode(info.name, mode) : undefined;
      return {
        id: modelId(mode, options.batchSize),
        mode,
        size: sizeOfMode(mode),
        modelName: info.name,
        description: MODE_DESCRIPTIONS[sizeOfMode(mode)] ?? `Mode ${mode} of ${info.name}`,
        device: info.device,
        batchSize: options.batchSize,
        isDefault: sizeOfMode(mode) === options.defaultSize.toLowerCase(),
        published: publishedLatencies(mode),
        benchmarks: (info.benchmarks ?? []).filter((b) => b.mode === mode),
        modeBenchmarks: recorded?.benchmark ? [recorded.benchmark] : [],
        quality: recorded?.quality ?? null,
        plan: recorded?.plan ?? ownPlan(info.modePlans?.[mode]),
        limits,
        loraRanks: caps.lora ? [1, MAX_LORA_RANK] : [],
        loraFormats: caps.lora ? LORA_FORMATS.filter((f) => caps.control || f !== 'bfl-control') : [],
      };
    });
    const byDefault = this.entries.find((e) => e.isDefault);
    if (!byDefault) {
      // Fail at startup, not on the first request: MODEL_SIZE names a mode the engine cannot run.
      throw new UnknownModelError(
        options.defaultSize,
        this.entries.map((e) => e.size),
      );
    }
    this.default = byDefault;
  }

  /** Ids of every entry, for error messages. */
  ids(): string[] {
    return this.entries.map((e) => e.id);
  }

  /**
   * Resolves a model id (`flux-1-dev-s-bs4`), a bare mode (`S`, `original`) or the alias `flux-1-dev`;
   * `undefined` or empty gives the default.
   * @throws UnknownModelError
   */
  resolve(name: string | undefined | null): ModelEntry {
    if (name === undefined || name === null || name === '') return this.default;
    const key = name.trim().toLowerCase();
    if (key === 'flux-1-dev') return this.default;
    const found = this.entries.find((e) => e.id === key || e.size === key);
    if (!found) {
      // A mode the engine knows but does not serve (e.g. L and M on CUDA before its planner ran): say why.
      const why = this.capabilities.unavailable?.find(
        (u) => sizeOfMode(u.mode) === key || modelId(u.mode, this.default.batchSize) === key,
      );
      throw new UnknownModelError(name, this.ids(), why?.reason);
    }
    return found;
  }
}
