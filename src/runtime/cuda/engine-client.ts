/**
 * @file {@link CudaEngineClient}: one `fluxql-engine --serve` child process and the typed calls of its framed
 * protocol (`engines/cuda/PROTOCOL.md`).
 *
 * Requests are written as they come and answered in order by the engine; responses are matched by `id`. A
 * request ends with its one final frame (anything but `progress`); `progress` frames before it go to the call's
 * `onProgress`. An `error` frame rejects the call with {@link CudaEngineError}. When the process ends for any reason
 * (exit, crash, signal, spawn failure, unparsable output), every pending call and every later one rejects with
 * {@link CudaEngineExitedError} carrying the exit code, signal and the tail of the engine's stderr; the client is
 * then dead for good and the owner starts a new one (the pipeline's CUDA executor does).
 */
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { encodeFrame, type Frame, FrameDecoder, type FrameHeader } from '../process/frames.ts';
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
}

/** The `loaded` answer. */
export interface CudaLoaded {
  device: string;
  precision: CudaPrecision;
  weightsBytes: number;
  ms: number;
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
}

/** Progress of one step of a job. */
export interface CudaProgress {
  job: number;
  /** Steps done so far (1-based). */
  step: number;
  steps: number;
  ms: number;
}

interface Pending {
  op: string;
  resolve: (frame: Frame) => void;
  reject: (err: Error) => void;
  onFrame?: (frame: Frame) => void;
}

const STDERR_TAIL_LINES = 40;

/** See the file header. */
export class CudaEngineClient {
  readonly #proc: ChildProcessByStdio<Writable, Readable, Readable>;
  readonly #pending = new Map<number, Pending>();
  readonly #decoder = new FrameDecoder();
  readonly #stderr: string[] = [];
  readonly #options: CudaEngineClientOptions;
  #nextId = 1;
  #dead: CudaEngineExitedError | undefined;
  #exited: Promise<void>;
  #partialLine = '';
  #failure: Error | undefined;

  private constructor(options: CudaEngineClientOptions) {
    this.#options = options;
    this.#proc = spawn(options.bin, ['--serve'], {
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.#proc.stdout.on('data', (chunk: Buffer) => this.#onData(chunk));
    this.#proc.stderr.setEncoding('utf8');
    this.#proc.stderr.on('data', (text: string) => this.#onStderr(text));
    // EPIPE after the engine died is reported by 'close' below; swallow it here so it cannot crash the server.
    this.#proc.stdin.on('error', () => undefined);
    let spawnError: Error | undefined;
    this.#exited = new Promise<void>((resolve) => {
      this.#proc.once('error', (err) => {
        spawnError = err;
        // A process that never started emits no 'close' when its pipes were never opened; end here.
        if (this.#proc.pid === undefined) {
          this.#die(null, null, err);
          resolve();
        }
      });
      this.#proc.once('close', (code, signal) => {
        this.#die(code, signal, spawnError ?? this.#failure);
        resolve();
      });
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
    return this.#dead;
  }

  /** Resolves when the process has ended (however it ended). */
  get exited(): Promise<void> {
    return this.#exited;
  }

  /** Number of requests sent and not yet answered. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /**
   * Sends one request and resolves with its final frame. `onFrame` receives the frames before it (`progress`).
   * @throws CudaEngineError on an `error` frame; CudaEngineExitedError when the process is or becomes gone.
   */
  request(
    header: Omit<FrameHeader, 'id'>,
    payload: readonly ArrayBufferView[] = [],
    onFrame?: (frame: Frame) => void,
  ): Promise<Frame> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    const frame = encodeFrame({ ...header, id } as FrameHeader, payload);
    return new Promise<Frame>((resolve, reject) => {
      this.#pending.set(id, { op: String(header.op), resolve, reject, ...(onFrame ? { onFrame } : {}) });
      this.#proc.stdin.write(frame);
    });
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
    };
  }

  /**
   * Loads a model onto the GPU (dropping any previous model and its jobs): a diffusers folder by path, or any layout
   * the host resolved, as a load spec ({@link cudaLoadSpec}).
   */
  async load(model: string | CudaLoadSpec, precision: CudaPrecision): Promise<CudaLoaded> {
    const source = typeof model === 'string' ? { model } : { spec: model };
    const { header: h } = await this.request({ op: 'load', ...source, precision });
    return {
      device: String(h.device),
      precision: h.precision as CudaPrecision,
      weightsBytes: num(h.weights_bytes),
      ms: num(h.ms),
    };
  }

  /** Encodes the prompts and prepares a batch on the GPU; returns the engine's job id. */
  async prepare(a: CudaPrepareArgs): Promise<{ job: number; steps: number; ms: number }> {
    const payload: ArrayBufferView[] = [a.clipIds, a.t5Ids];
    if (a.latents) payload.push(a.latents);
    const { header: h } = await this.request(
      {
        op: 'prepare',
        batch: a.batch,
        height: a.height,
        width: a.width,
        t5_len: a.t5Len,
        sigmas: Array.from(a.sigmas),
        guidance: Array.from(a.guidance),
        latents: a.latents ? 'payload' : 'seed',
        ...(a.seed !== undefined ? { seed: a.seed } : {}),
      },
      payload,
    );
    return { job: num(h.job), steps: num(h.steps), ms: num(h.ms) };
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

  /** The job's current packed latents `[B, L, 64]`. */
  async latents(job: number): Promise<{ shape: number[]; data: Float32Array }> {
    const { header: h, payload } = await this.request({ op: 'latents', job });
    const shape = (h.shape as number[]).map(Number);
    return { shape, data: floatsOf(payload) };
  }

  /** Decodes the job's latents: RGB8 `[B, H, W, 3]`. */
  async decode(job: number): Promise<{ batch: number; height: number; width: number; data: Uint8Array; ms: number }> {
    const { header: h, payload } = await this.request({ op: 'decode', job });
    return { batch: num(h.batch), height: num(h.height), width: num(h.width), data: payload, ms: num(h.ms) };
  }

  /** Frees a job's GPU memory. */
  async release(job: number): Promise<void> {
    await this.request({ op: 'release', job });
  }

  /**
   * Asks the engine to quit and waits for the process to end; kills it when it has not ended after
   * `graceMs` (a GPU stuck in a kernel does not read stdin).
   */
  async quit(graceMs = 10_000): Promise<void> {
    if (!this.#dead) {
      this.request({ op: 'quit' }).catch(() => undefined);
      this.#proc.stdin.end();
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), graceMs);
    });
    const r = await Promise.race([this.#exited.then(() => 'exited' as const), timeout]);
    clearTimeout(timer);
    if (r === 'timeout') {
      this.kill('SIGKILL');
      await this.#exited;
    }
  }

  /** Sends a signal to the process (tests use SIGKILL to stand for a GPU fault). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) this.#proc.kill(signal);
  }

  /** The last lines of the engine's stderr. */
  stderrTail(): string {
    return [...this.#stderr, ...(this.#partialLine ? [this.#partialLine] : [])].join('\n');
  }

  #onData(chunk: Buffer): void {
    if (this.#failure) return;
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      // Output that is not frames (e.g. a library printing to stdout) desynchronises the stream for good.
      this.#failure = err as Error;
      this.kill('SIGKILL');
      return;
    }
    for (const frame of frames) this.#dispatch(frame);
  }

  #dispatch(frame: Frame): void {
    const id = typeof frame.header.id === 'number' ? frame.header.id : Number(frame.header.id);
    const p = this.#pending.get(id);
    if (!p) {
      this.#options.onLog?.(`[engine] unexpected frame ${JSON.stringify(frame.header)}`);
      return;
    }
    if (frame.header.op === 'progress') {
      p.onFrame?.(frame);
      return;
    }
    this.#pending.delete(id);
    if (frame.header.op === 'error') {
      p.reject(engineErrorFromFrame(p.op, frame.header));
    } else {
      p.resolve(frame);
    }
  }

  #onStderr(text: string): void {
    const lines = (this.#partialLine + text).split('\n');
    this.#partialLine = lines.pop() ?? '';
    for (const line of lines) {
      this.#stderr.push(line);
      if (this.#stderr.length > STDERR_TAIL_LINES) this.#stderr.shift();
      this.#options.onLog?.(line);
    }
  }

  #die(code: number | null, signal: NodeJS.Signals | null, cause: Error | undefined): void {
    if (this.#dead) return;
    const how =
      cause && this.#proc.pid === undefined
        ? `could not be started (${cause.message})`
        : cause
          ? `was stopped: ${cause.message}`
          : signal
            ? `was killed by ${signal}`
            : `exited with code ${code}`;
    const tail = this.stderrTail();
    const lastLog = tail.split('\n').filter(Boolean).slice(-3).join(' | ');
    this.#dead = new CudaEngineExitedError(
      `CUDA engine ${this.#options.bin} ${how}${lastLog ? `; last log: ${lastLog}` : ''}`,
      code,
      signal,
      tail,
      cause ? { cause } : undefined,
    );
    for (const p of this.#pending.values()) p.reject(this.#dead);
    this.#pending.clear();
    this.#options.onExit?.(this.#dead);
  }
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : Number(v);
}

function progressOf(h: FrameHeader): CudaProgress {
  return { job: num(h.job), step: num(h.step), steps: num(h.steps), ms: num(h.ms) };
}

/** float32 view of a payload (copied when it is not 4-byte aligned). */
function floatsOf(payload: Uint8Array): Float32Array {
  if (payload.byteOffset % 4 === 0) return new Float32Array(payload.buffer, payload.byteOffset, payload.byteLength / 4);
  return new Float32Array(payload.slice().buffer);
}
