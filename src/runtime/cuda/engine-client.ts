/**
 * @file {@link CudaEngineClient}: one `fluxql-engine --serve` child process and the typed calls of its framed
 * protocol (`engines/cuda/PROTOCOL.md`).
 *
 * Requests are written as they come and answered in order by the engine; responses are matched by `id`. A
 * request ends with its one final frame (anything but `progress`); `progress` frames before it go to the call's
 * `onProgress`. An `error` frame rejects the call with {@link CudaEngineError}. When the process ends for any reason
 * (exit, crash, signal, spawn failure, unparsable output), every pending call and every later one rejects with
 * {@link CudaEngineExitedError} carrying the exit code, signal and the tail of the engine's stderr; the client is
 * then dead for good and the owner starts a new one (the pipeline's CUDA executor does). The process, its stderr
 * tail and its death are {@link FramedProcess}'s, over stdin/stdout; this file holds the protocol's calls.
 */
import { type EngineExitedError, FramedProcess } from '../process/framed-process.ts';
import { encodeFrame, type Frame, type FrameHeader } from '../process/frames.ts';
import { CudaEngineExitedError, engineErrorFromFrame } from './errors.ts';
import type { CudaLoadSpec } from './load-spec.ts';

/** Numeric precision of a loaded model. */
export type CudaPrecision = 'f32' | 'bf16' | 'fp8';

/** Options of {@link CudaEngineClient.start}. */
export interface CudaEngineClientOptions {
  /** Path of the `fluxql-engine` executable. */
  bin: string;
  /** Environment of the process (e.g. LD_LIBRARY_PATH for cuDNN). @default process.env */
  env?: NodeJS.ProcessEnv;
  /** Receives every stderr line of the engine (its log). */
  onLog?: (line: string) => void;
  /** Called once when the process has ended, with the error pending calls got. */
  onExit?: (err: CudaEngineExitedError) => void;
}

/** The `info` answer: the card and the engine's state. */
export interface CudaEngineInfo {
  protocol: number;
  /** CUDA device name, e.g. `NVIDIA H100 80GB HBM3`. */
  device: string;
  computeCapability: string;
  memoryTotalBytes: number;
  memoryFreeBytes: number;
  /** cudaRuntimeGetVersion, e.g. 13000. */
  cudaRuntime: number;
  loaded: boolean;
  precision: CudaPrecision | null;
  /** Attention kernel of the loaded model: `cudnn`, `own-flash` or `f32-rows`. */
  attention: string | null;
  /** Prepared jobs held. */
  jobs: number;
  /** After `load`: the named precision plans jobs may pick (`prepare`'s `plan`). */
  plans?: CudaPlanInfo[];
}

/**
 * A named precision plan served per job (PROTOCOL.md `load` `plans`): a preset name (`fp8`: bf16 plus the
 * LayerNorm-fed layers in fp8 E4M3) or per-layer rules `glob=type;...` over the base compute type.
 */
export type CudaPlanSpec = string;

/** A named plan as the engine made it: the transformer layers it changes and their alternate weights' GPU bytes. */
export interface CudaPlanInfo {
  name: string;
  layers: number;
  bytes: number;
}

/** The `loaded` answer. */
export interface CudaLoaded {
  device: string;
  precision: CudaPrecision;
  weightsBytes: number;
  ms: number;
  /** The named plans made at load (empty without `plans`). */
  plans: CudaPlanInfo[];
}

/** Arguments of {@link CudaEngineClient.prepare}; shapes as PROTOCOL.md gives them. */
export interface CudaPrepareArgs {
  batch: number;
  height: number;
  width: number;
  /** CLIP ids `[B, 77]`. */
  clipIds: Int32Array;
  /** T5 ids `[B, t5Len]`. */
  t5Ids: Int32Array;
  t5Len: number;
  /** `[steps + 1]`, last 0 (host scheduler). */
  sigmas: ArrayLike<number>;
  /** `[B]`. */
  guidance: ArrayLike<number>;
  /** Explicit packed starting latents `[B, (H/16)(W/16), 64]`; absent: the engine's own seeded generator. */
  latents?: Float32Array;
  /** Seed of the engine's generator when `latents` is absent. */
  seed?: number;
  /** The job's LoRA set: names loaded with `lora_load` (see `lora-requests.ts`), in rank-concatenation order. */
  loras?: readonly { name: string; strength: number }[];
  /** Step caching (First-Block-Cache) for the job; absent: every step runs every block. */
  stepCache?: CudaStepCache;
  /** The job's precision plan: a name given at `load` (`plans`); absent: the base plan. */
  plan?: string;
  /** Branch outputs in bf16 (mode XL's step, PROTOCOL.md `branch_bf16`); absent: fp32. */
  branchBf16?: boolean;
}

/**
 * The job's step-cache settings (PROTOCOL.md `step_cache`): a step reuses the last full step's tail residual when the
 * first block's residual moved less than `threshold` (relative L1) for every sample; the first `warmupSteps` steps
 * run in full, and at most `maxConsecutive` steps in a row are cached. Engine defaults: 1 and 1.
 */
export interface CudaStepCache {
  threshold: number;
  warmupSteps?: number;
  maxConsecutive?: number;
}

/** A request frame before its id: header and payload parts. */
export interface RequestFrame {
  header: Omit<FrameHeader, 'id'>;
  payload: ArrayBufferView[];
}

/**
 * The `prepare` request: ids, then the explicit latents when given (else the engine's seeded generator). The edit
 * requests (`edit-requests.ts`) extend this frame with their fields and payload parts.
 */
export function prepareFrameOf(a: CudaPrepareArgs): RequestFrame {
  const payload: ArrayBufferView[] = [a.clipIds, a.t5Ids];
  if (a.latents) payload.push(a.latents);
  return {
    header: {
      op: 'prepare',
      batch: a.batch,
      height: a.height,
      width: a.width,
      t5_len: a.t5Len,
      sigmas: Array.from(a.sigmas),
      guidance: Array.from(a.guidance),
      latents: a.latents ? 'payload' : 'seed',
      ...(a.seed !== undefined ? { seed: a.seed } : {}),
      ...(a.loras && a.loras.length > 0 ? { loras: a.loras.map((l) => ({ name: l.name, strength: l.strength })) } : {}),
      ...(a.stepCache ? { step_cache: stepCacheHeaderOf(a.stepCache) } : {}),
      ...(a.plan !== undefined ? { plan: a.plan } : {}),
      ...(a.branchBf16 ? { branch_bf16: true } : {}),
    },
    payload,
  };
}

/**
 * The `join` request (PROTOCOL.md): `a`'s samples into the running job `job` at its next step boundary, with their own
 * schedule; the same header fields and payload as `prepare` (step caching is per job: not sent).
 */
export function joinFrameOf(job: number, a: Omit<CudaPrepareArgs, 'stepCache'>): RequestFrame {
  const f = prepareFrameOf(a);
  return { header: { ...f.header, op: 'join', job }, payload: f.payload };
}

function stepCacheHeaderOf(c: CudaStepCache): Record<string, number> {
  return {
    threshold: c.threshold,
    ...(c.warmupSteps !== undefined ? { warmup_steps: c.warmupSteps } : {}),
    ...(c.maxConsecutive !== undefined ? { max_consecutive: c.maxConsecutive } : {}),
  };
}

/**
 * Arguments of {@link CudaEngineClient.calibrate} (PROTOCOL.md `calibrate`): `prepare`'s plain text-to-image inputs
 * (no plan, LoRA set or step caching), the timed repetitions, whole plans to measure (`verify`: name → preset or
 * rules) and whether to measure every layer alone (`perLayer`, default true).
 */
export interface CudaCalibrateArgs extends Omit<CudaPrepareArgs, 'plan' | 'loras' | 'stepCache'> {
  reps?: number;
  verify?: Readonly<Record<string, CudaPlanSpec>>;
  perLayer?: boolean;
  /** Measure each layer's fp8row alternate too (PROTOCOL.md `calibrate` `fp8row`; twice the table's cost). */
  fp8row?: boolean;
}

/** A `verify` plan's measured error (PROTOCOL.md `calibrated.verified`). */
export interface CudaPlanCheck {
  name: string;
  /** Linears the plan makes fp8. */
  layers: number;
  /** Relative L2 error of the transformer output against the base plan, every layer of the plan at once. */
  relErr: number;
}

/** The `calibrated` answer: the header as sent (its `layers` table is the planner's to check) and the checks. */
export interface CudaCalibrated {
  header: FrameHeader;
  verified: CudaPlanCheck[];
  ms: number;
}

/** The `calibrate` request: `prepare`'s frame under another op, with the calibration fields. */
export function calibrateFrameOf(a: CudaCalibrateArgs): RequestFrame {
  const f = prepareFrameOf(a);
  return {
    header: {
      ...f.header,
      op: 'calibrate',
      ...(a.reps !== undefined ? { reps: a.reps } : {}),
      ...(a.verify && Object.keys(a.verify).length > 0 ? { verify: { ...a.verify } } : {}),
      ...(a.perLayer !== undefined ? { per_layer: a.perLayer } : {}),
      ...(a.fp8row ? { fp8row: true } : {}),
    },
    payload: f.payload,
  };
}

/** Progress of one step of a job. */
export interface CudaProgress {
  job: number;
  /** Steps done so far (1-based). */
  step: number;
  steps: number;
  ms: number;
  /** Jobs with step caching: steps run in full and steps that reused the cached residual, so far. */
  stepCache?: { full: number; cached: number };
  /** Per sample (engine ids, batch order): steps done and its schedule's length (engines that report them). */
  samples?: CudaSampleProgress[];
}

/** One sample of a job: its engine id (PROTOCOL.md `samples`), steps done, its schedule's length. */
export interface CudaSampleProgress {
  id: number;
  step: number;
  steps: number;
}

/** See the file header. */
export class CudaEngineClient {
  readonly #proc: FramedProcess;

  private constructor(options: CudaEngineClientOptions) {
    this.#proc = FramedProcess.start({
      name: `CUDA engine ${options.bin}`,
      command: options.bin,
      args: ['--serve'],
      ...(options.env ? { env: options.env } : {}),
      channel: 'stdio',
      isInterim: (frame) => frame.header.op === 'progress',
      exitErrorClass: CudaEngineExitedError,
      ...(options.onLog ? { onLog: options.onLog } : {}),
      ...(options.onExit ? { onExit: options.onExit as (err: EngineExitedError) => void } : {}),
    });
  }

  /** Spawns `bin --serve`. Spawn failures (missing file, not executable) surface on the first call. */
  static start(options: CudaEngineClientOptions): CudaEngineClient {
    return new CudaEngineClient(options);
  }

  /** The process id (undefined when it could not be spawned). */
  get pid(): number | undefined {
    return this.#proc.pid;
  }

  /** Set once the process has ended: the error every call now gets. */
  get exitError(): CudaEngineExitedError | undefined {
    return this.#proc.exitError as CudaEngineExitedError | undefined;
  }

  /** Resolves when the process has ended (however it ended). */
  get exited(): Promise<void> {
    return this.#proc.exited.then(() => undefined);
  }

  /** Number of requests sent and not yet answered. */
  get pendingCount(): number {
    return this.#proc.pendingCount;
  }

  /**
   * Sends one request and resolves with its final frame. `onFrame` receives the frames before it (`progress`).
   * @throws CudaEngineError on an `error` frame; CudaEngineExitedError when the process is or becomes gone.
   */
  async request(
    header: Omit<FrameHeader, 'id'>,
    payload: readonly ArrayBufferView[] = [],
    onFrame?: (frame: Frame) => void,
  ): Promise<Frame> {
    const frame = await this.#proc.request((id) => encodeFrame({ ...header, id } as FrameHeader, payload), onFrame);
    if (frame.header.op === 'error') throw engineErrorFromFrame(String(header.op), frame.header);
    return frame;
  }

  /** The card and the engine's state (answers before `load`). */
  async info(): Promise<CudaEngineInfo> {
    const { header: h } = await this.request({ op: 'info' });
    return {
      protocol: num(h.protocol),
      device: String(h.device),
      computeCapability: String(h.compute_capability),
      memoryTotalBytes: num(h.memory_total_bytes),
      memoryFreeBytes: num(h.memory_free_bytes),
      cudaRuntime: num(h.cuda_runtime),
      loaded: h.loaded === true,
      precision: (h.precision as CudaPrecision | null) ?? null,
      attention: typeof h.attention === 'string' ? h.attention : null,
      jobs: num(h.jobs),
      ...(Array.isArray(h.plans) ? { plans: plansOf(h.plans) } : {}),
    };
  }

  /**
   * Loads a model onto the GPU (dropping any previous model and its jobs): a diffusers folder by path, or any layout
   * the host resolved, as a load spec ({@link cudaLoadSpec}). `plans`: named precision plans the engine makes
   * alternate weights for once, so jobs can pick one (`prepare`'s `plan`) with no reload.
   */
  async load(
    model: string | CudaLoadSpec,
    precision: CudaPrecision,
    options: { loraMaxMb?: number; plans?: Readonly<Record<string, CudaPlanSpec>> } = {},
  ): Promise<CudaLoaded> {
    const source = typeof model === 'string' ? { model } : { spec: model };
    const lora = options.loraMaxMb !== undefined ? { lora_max_mb: options.loraMaxMb } : {};
    const plans = options.plans && Object.keys(options.plans).length > 0 ? { plans: { ...options.plans } } : {};
    const { header: h } = await this.request({ op: 'load', ...source, precision, ...lora, ...plans });
    return {
      device: String(h.device),
      precision: h.precision as CudaPrecision,
      weightsBytes: num(h.weights_bytes),
      ms: num(h.ms),
      plans: Array.isArray(h.plans) ? plansOf(h.plans) : [],
    };
  }

  /** Encodes the prompts and prepares a batch on the GPU; returns the engine's job id. */
  async prepare(a: CudaPrepareArgs): Promise<{ job: number; steps: number; ms: number }> {
    const f = prepareFrameOf(a);
    const { header: h } = await this.request(f.header, f.payload);
    return { job: num(h.job), steps: num(h.steps), ms: num(h.ms) };
  }

  /**
   * Per-layer calibration of the loaded bf16 model (PROTOCOL.md `calibrate`): runs the inputs' base trajectory, then
   * each transformer Linear alone in fp8 (`perLayer`) and each `verify` plan whole. Costs (layers + plans) x steps
   * transformer forwards: a small geometry. An f32 engine answers `error`.
   */
  async calibrate(a: CudaCalibrateArgs): Promise<CudaCalibrated> {
    const f = calibrateFrameOf(a);
    const { header: h } = await this.request(f.header, f.payload);
    const verified = (Array.isArray(h.verified) ? (h.verified as Record<string, unknown>[]) : []).map((v) => ({
      name: String(v.name),
      layers: num(v.layers),
      relErr: num(v.rel_err),
    }));
    return { header: h, verified, ms: num(h.ms) };
  }

  /** Adds samples to a running job (same size, T5 length and LoRA set; own schedule): their engine sample ids. */
  async join(
    job: number,
    a: Omit<CudaPrepareArgs, 'stepCache'>,
  ): Promise<{ added: number[]; batch: number; steps: number; ms: number }> {
    const f = joinFrameOf(job, a);
    const { header: h } = await this.request(f.header, f.payload);
    return { added: (h.added as number[]).map(Number), batch: num(h.batch), steps: num(h.steps), ms: num(h.ms) };
  }

  /** Runs `count` denoising steps of a job (default: all remaining), reporting each. */
  async step(job: number, count?: number, onProgress?: (p: CudaProgress) => void): Promise<CudaProgress> {
    const { header: h } = await this.request(
      { op: 'step', job, ...(count !== undefined ? { count } : {}) },
      [],
      onProgress
        ? (f) => {
            if (f.header.op === 'progress') onProgress(progressOf(f.header));
          }
        : undefined,
    );
    return progressOf(h);
  }

  /** The job's current packed latents `[B, L, 64]` (or of the named samples, in that order: `[n, L, 64]`). */
  async latents(job: number, samples?: readonly number[]): Promise<{ shape: number[]; data: Float32Array }> {
    const { header: h, payload } = await this.request({ op: 'latents', job, ...samplesField(samples) });
    const shape = (h.shape as number[]).map(Number);
    return { shape, data: floatsOf(payload) };
  }

  /** Decodes the job's latents (or the named samples', in that order): RGB8 `[n, H, W, 3]`. */
  async decode(
    job: number,
    samples?: readonly number[],
  ): Promise<{ batch: number; height: number; width: number; data: Uint8Array; ms: number }> {
    const { header: h, payload } = await this.request({ op: 'decode', job, ...samplesField(samples) });
    return { batch: num(h.batch), height: num(h.height), width: num(h.width), data: payload, ms: num(h.ms) };
  }

  /** Frees a job's GPU memory, or only the named samples' (the engine compacts the job to the others). */
  async release(job: number, samples?: readonly number[]): Promise<void> {
    await this.request({ op: 'release', job, ...samplesField(samples) });
  }

  /**
   * Asks the engine to quit and waits for the process to end; kills it when it has not ended after
   * `graceMs` (a GPU stuck in a kernel does not read stdin).
   */
  async quit(graceMs = 10_000): Promise<void> {
    if (!this.#proc.exitError) this.request({ op: 'quit' }).catch(() => undefined);
    await this.#proc.stop(graceMs);
  }

  /** Sends a signal to the process (tests use SIGKILL to stand for a GPU fault). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    this.#proc.kill(signal);
  }

  /** The last lines of the engine's stderr. */
  stderrTail(): string {
    return this.#proc.stderrTail();
  }
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : Number(v);
}

function plansOf(list: unknown[]): CudaPlanInfo[] {
  return list.map((p) => {
    const o = p as Record<string, unknown>;
    return { name: String(o.name), layers: num(o.layers), bytes: num(o.bytes) };
  });
}

function samplesField(samples: readonly number[] | undefined): { samples?: number[] } {
  return samples ? { samples: [...samples] } : {};
}

function progressOf(h: FrameHeader): CudaProgress {
  const ids = Array.isArray(h.samples) ? (h.samples as unknown[]).map(Number) : undefined;
  const done = h.sample_step as unknown[] | undefined;
  const total = h.sample_steps as unknown[] | undefined;
  return {
    job: num(h.job),
    step: num(h.step),
    steps: num(h.steps),
    ms: num(h.ms),
    ...(h.full_steps !== undefined ? { stepCache: { full: num(h.full_steps), cached: num(h.cached_steps) } } : {}),
    ...(ids && done && total
      ? { samples: ids.map((id, i) => ({ id, step: num(done[i]), steps: num(total[i]) })) }
      : {}),
  };
}

/** float32 view of a payload (copied when it is not 4-byte aligned). */
function floatsOf(payload: Uint8Array): Float32Array {
  if (payload.byteOffset % 4 === 0) return new Float32Array(payload.buffer, payload.byteOffset, payload.byteLength / 4);
  return new Float32Array(payload.slice().buffer);
}
