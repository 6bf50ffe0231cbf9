/**
 * @file The step-level contract between the service layer (scheduler) and a FLUX pipeline.
 *
 * The scheduler plans work in units of one denoising step, as vLLM and Triton's "iterative sequences" do: a
 * generation is `prepare` (tokenize, encode, seeded noise, sigma schedule) → N × `step` → `decode`. Sample state
 * (text embeddings, latents) stays inside the executor, usually an engine child process, so only small handles and
 * the final pixels cross the process boundary. Samples in one `step` call may sit at different step indices (each carries its
 * own sigma), which is what lets a request join a running batch at a step boundary.
 *
 * Implementations: the ONNX Runtime pipeline (`src/pipeline/flux/`) and the native CUDA engine client.
 */
import type { LoraInfo, LoraScan, LoraSelection } from './lora/index.ts';

/** What one sample of a generation asks for. */
export interface SampleRequest {
  /** Prompt for CLIP (and for T5 when `prompt2` is absent). */
  prompt: string;
  /** Prompt for T5; defaults to `prompt`. */
  prompt2?: string;
  /** Output height in pixels; a multiple of 16. */
  height: number;
  /** Output width in pixels; a multiple of 16. */
  width: number;
  /** Number of denoising steps. @default 28 */
  steps: number;
  /** Distilled guidance scale fed to the guidance embedder. @default 3.5 */
  guidanceScale: number;
  /** Seed of the starting noise; ignored when `latents` is given. */
  seed: number;
  /** T5 sequence length (pads and truncates to it). @default 512 */
  maxSequenceLength?: number;
  /** Explicit packed starting noise `[(H/16)*(W/16), 64]`, for parity tests. */
  latents?: Float32Array;
  /** Compiled engine variant (elastic mode), e.g. `original`. @default 'original' */
  mode?: string;
  /**
   * LoRAs to apply, each a file name inside LORA_DIR with its strength; several add up. `[]`: none. Absent: the
   * executor's default set (`loadLora` / `unloadLora`), snapshotted when the sample is prepared.
   */
  loras?: { name: string; strength: number }[];
  /**
   * Control image for a BFL Control LoRA (FLUX.1-Canny/Depth-dev-lora) in `loras`: resized to `width × height` and
   * VAE-encoded as the control input. Required exactly when the set holds such a LoRA (`param: 'controlImage'`
   * errors otherwise). The service builds it from an upload or URL (`src/service/media/control-image.ts`). The process executor
   * (`createFluxExecutor`) copies it into the engine process once per `prepare` call.
   */
  controlImage?: RgbImage;
  /**
   * Input image of img2img / inpainting (diffusers' FluxImg2ImgPipeline / FluxInpaintPipeline), resized to
   * `width × height` and VAE-encoded; `strength` says how much of the schedule runs (`src/pipeline/flux/edit.ts`).
   */
  image?: RgbImage;
  /** Inpainting mask, the image's size: white (≥ 0.5 after grayscale) = repaint. Needs `image`. */
  mask?: RgbImage;
  /** Share of the schedule run on the input image, 0-1 (diffusers' `strength`). @default 0.6 with an image */
  strength?: number;
  /** Negative prompt of true classifier-free guidance (runs when `trueCfgScale > 1`). */
  negativePrompt?: string;
  /** True CFG scale (diffusers' `true_cfg_scale`): `neg + scale·(pos − neg)`. @default 1 (off) */
  trueCfgScale?: number;
  /**
   * Edits: this sample is sample `index` of a batch of `batch` drawn from one torch generator seeded with `seed`
   * (diffusers' single `generator=`), instead of its own generator.
   */
  sharedGenerator?: { index: number; batch: number };
}

/** Opaque handle of a prepared sample living inside the executor. */
export type SampleHandle = string;

/** Progress of one sample after a step. */
export interface StepResult {
  handle: SampleHandle;
  /** Steps completed so far (1-based after the first step). */
  step: number;
  totalSteps: number;
}

/** A decoded image: interleaved RGB bytes, HWC. */
export interface RgbImage {
  width: number;
  height: number;
  /** `[H, W, 3]` uint8. */
  data: Uint8Array;
}

/** Static facts of the loaded model, for the `models` query and validation. */
export interface ModelInfo {
  /** Display name, e.g. `flux-tiny` or `FLUX.1-dev`. */
  name: string;
  /** Path the model was loaded from. */
  path: string;
  /** What the executor can run: the service validates requests against this, in one place. */
  capabilities: ExecutorCapabilities;
  /** Execution provider / engine, e.g. `cpu`, `webgpu`, `cuda-native`. */
  device: string;
  /**
   * Which engine runs the modes: ONNX Runtime (compiled ONNX engines, `engines/compiler`) or the native CUDA
   * engine. Mode results measured on one (`bench/results/modes.json` is ONNX Runtime's) never describe the other.
   */
  engine: 'onnx' | 'cuda';
  /** Latent channels × 4 (packed feature size), 64 for FLUX. */
  packedChannels: number;
  /** VAE spatial factor × 2 (pixels per latent token side), 16 for FLUX. */
  pixelsPerToken: number;
  /** Latencies measured offline for this engine (the CUDA engine's benchmark); absent for ORT. */
  benchmarks?: BenchmarkLatency[];
  /** The executor's own plans of its modes, measured on the loaded model (the CUDA planner's); absent for ORT. */
  modePlans?: Record<string, ExecutorModePlan>;
}

/** A mode's plan as its executor measured it on the loaded model (`models` query; the CUDA planner's manifest). */
export interface ExecutorModePlan {
  /** Relative error budget of the transformer output against the base plan. */
  errorBudget: number | null;
  /** The plan's measured error. */
  measuredError: number | null;
  /** Layers per type, most layers first. */
  algorithms: { algorithm: string; layers: number }[];
  /**
   * Step caching as calibrated (threshold 0: none kept the floor): the rule's most cached steps in a row, full and
   * cached steps of the worst calibration image, its PSNR against `original` and the mode's floor (dB).
   */
  stepCache: {
    threshold: number;
    maxConsecutive: number;
    fullSteps: number;
    cachedSteps: number;
    psnr: number;
    minPsnr: number;
  } | null;
  source: string;
}

/**
 * What an executor runs, declared once in its {@link ModelInfo} (and a scale-out worker's advert). Requests outside
 * it are refused by the service with a typed error before they reach the engine; executors do not repeat the checks.
 */
export interface ExecutorCapabilities {
  /** Modes (compiled engine variants) it runs, e.g. `original`, `XL`. */
  modes: string[];
  /** Known modes it does not run, each with the reason (the service gives it when one is asked for). */
  unavailable?: { mode: string; reason: string }[];
  /** Runs per-request LoRA sets; exactly then the executor has a {@link LoraAdminPort}. */
  lora: boolean;
  /** Runs BFL Control LoRAs with a control image (VAE-encoded by the engine). */
  control: boolean;
  /** Runs img2img, inpainting and true CFG (`image`, `mask`, `strength`, `negativePrompt`, `trueCfgScale`). */
  edit?: boolean;
  /** Largest width or height in pixels. */
  maxSide: number;
  /** Largest batch one `step` call accepts. */
  maxBatch: number;
}

/**
 * A latency an offline benchmark measured for this executor's engine (e.g. `bench/results/cuda-h100.json`), shown
 * by the `models` query as a MEASURED row with the card it ran on.
 */
export interface BenchmarkLatency {
  mode: string;
  /** The card, e.g. `NVIDIA H100 80GB HBM3`. */
  hardware: string;
  width: number;
  height: number;
  steps: number;
  /** Images per engine batch in the run. */
  batch: number;
  /** Seconds per image, end to end. */
  latencySeconds: number;
  meanStepMs: number;
  /** Timed runs averaged. */
  runs: number;
  /** The result file and what was measured (weights, precision, method). */
  source: string;
}

/** Counters of the runtime behind an executor, for metrics and tests. */
export interface ExecutorStats {
  /** ORT sessions created since start. Switching LoRAs must not add any (only a first LoRA engine load does). */
  sessionsCreated: number;
  /** Native engine processes started since start, the first one included (CUDA executor only). */
  engineStarts?: number;
  /** Native engine processes that ended unasked (crash, GPU fault, kill) (CUDA executor only). */
  engineExits?: number;
  /**
   * Engine jobs `prepare` created since start (CUDA executor only): one per group of samples that did not join a
   * live job. The planner's calibration jobs are not counted. With {@link joinedSamples}, shows whether requests
   * admitted at a step boundary ran in the live engine batch or in a job of their own.
   */
  engineJobs?: number;
  /** Samples `prepare` sent into a live engine job (the engine's `join`) since start (CUDA executor only). */
  joinedSamples?: number;
  /**
   * Step caching of the CUDA executor (its `stepCache` option, or modes that cache; absent when nothing caches): the
   * option's threshold (null without it: the modes' own thresholds are in the `models` query), and job steps run in
   * full or from the cached residual since start (one count per engine job and step, as the ONNX `StepCache.stats`
   * counts per batched group).
   */
  stepCache?: { threshold: number | null; full: number; cached: number };
}

/**
 * One layer of a compressed mode's plan (the engine manifest's `plan` entries): the algorithm the planner chose for
 * it, with the measurements behind the choice.
 */
export interface PlanLayer {
  /** Linear layer of the XL graph, diffusers-style (fused names, e.g. `transformer_blocks.0.attn.to_qkv`). */
  layer: string;
  /** e.g. `fp32` (kept), `int8-dyn`, `int8-b128`. */
  algorithm: string;
  /** Relative transformer output error when only this layer uses `algorithm`. */
  error?: number;
  /** Time this choice saves against float32, ms per transformer forward on the benchmark configuration. */
  gainMs?: number;
}

/** A handle that is not (or no longer) known to the executor. */
export class UnknownHandleError extends Error {
  constructor(readonly handle: string) {
    super(`unknown sample handle ${handle}`);
    this.name = 'UnknownHandleError';
  }
}

/** Whether an executor's engine is up, with the reason when not (a supervised engine process restarting). */
export interface EngineHealth {
  ready: boolean;
  reason?: string;
}

/**
 * LoRA files and the engine's default LoRA set: a port of its own, since only some engines run LoRAs. Errors are
 * `LoraError`s (across a process: `ExecutorError` with `name` 'LoraError' and `code`).
 */
export interface LoraAdminPort {
  /** Every LoRA file in LORA_DIR with its metadata; files that do not fit the model are listed with their error. */
  loras(): Promise<LoraScan>;
  /**
   * Validates a LoRA set for `mode` (files, shapes, strengths, duplicates, engine support) without changing any
   * state, and loads that mode's LoRA engine. Returns each member's metadata in order (canonical names).
   * @throws LoraError
   */
  checkLoras(set: LoraSelection[], mode?: string): Promise<LoraInfo[]>;
  /** Adds a LoRA to the default set (or changes its strength). @throws LoraError, leaving the set unchanged */
  loadLora(name: string, strength: number): Promise<LoraInfo>;
  /** Removes a LoRA from the default set; false when it was not in it. */
  unloadLora(name: string): Promise<boolean>;
  /** The default set (applied to requests without `loras`), in load order. */
  activeLoras(): Promise<LoraSelection[]>;
}

/**
 * The step-level pipeline the scheduler drives: prepare / step / decode / release / close, over what
 * {@link ModelInfo.capabilities} declares; everything else is optional. Calls come from one owner at a time.
 */
export interface StepExecutor {
  info(): ModelInfo;
  /** Tokenize, encode, draw noise and compute the sigma schedule for each request; returns one handle each. */
  prepare(requests: SampleRequest[]): Promise<SampleHandle[]>;
  /**
   * Run one Euler step for every handle, batched into as few engine runs as their shapes allow.
   * @param options.preview when true, also return a small RGB preview per sample made cheaply from the latents.
   */
  step(handles: SampleHandle[], options?: { preview?: boolean }): Promise<(StepResult & { preview?: RgbImage })[]>;
  /** Decode the finished latents of each handle to RGB. */
  decode(handles: SampleHandle[]): Promise<RgbImage[]>;
  /** Forget samples (finished, cancelled or failed). Unknown handles are ignored. */
  release(handles: SampleHandle[]): Promise<void>;
  /** Stop engine processes. */
  close(): Promise<void>;
  /** Whether the engine is up (a supervised process may be restarting); absent: always up. */
  health?(): EngineHealth;
  /** Tells `listener` each time {@link health} changes; returns the unsubscribe function. */
  onHealth?(listener: (health: EngineHealth) => void): () => void;

  /** LoRA administration; present exactly when `info().capabilities.lora`. */
  readonly loraAdmin?: LoraAdminPort;
  /** Runtime counters (diagnostics). */
  stats?(): Promise<ExecutorStats>;
  /**
   * Per-layer plans of the planned modes (L, M, S) whose plan is already cached or compiled, by mode; a mode not
   * planned yet is absent. Never plans or compiles anything. Absent where the engine has no such plans (CUDA).
   */
  modePlans?(): Promise<Record<string, PlanLayer[]>>;
  /**
   * Makes `mode` ready to serve: plans, compiles, calibrates and loads its engine when that has not happened yet,
   * so `prepare` for the mode does none of it. The service calls it in the background (startup warm-up, or the
   * first request for a cold mode) and admits the mode's jobs once it resolves; steps of other modes keep running
   * meanwhile. Absent where every mode is ready once the executor exists (CUDA).
   */
  warm?(mode: string): Promise<void>;
}
