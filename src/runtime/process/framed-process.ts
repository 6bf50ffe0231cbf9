/**
 * @file {@link FramedProcess}: an engine child process spoken to in frames (`frames.ts`), and {@link serveFrames},
 * the child's side of it for our own Node children. Frames travel over a socket on the child's file descriptor 3
 * (the ONNX engine: its stdout stays free for logs) or over its stdin/stdout (the native CUDA engine,
 * `engines/cuda/PROTOCOL.md`). Stderr is read line by line for the log and kept as a tail for the exit message.
 *
 * Requests carry an `id` and are answered by one final frame with the same id, in any order; a protocol may send
 * interim frames before it (the CUDA engine's `progress`), which go to the request's own listener. When the process ends for
 * any reason (exit, native crash, signal, spawn failure, output that is not frames), every pending request and every
 * later one rejects with {@link EngineExitedError}; the process is then dead for good and its owner starts another
 * (the pipeline's engine supervisor does).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { type Frame, FrameDecoder } from './frames.ts';

/** The engine process is gone, so a request pending on it, or sent to it afterwards, cannot be answered. */
export class EngineExitedError extends Error {
  override name = 'EngineExitedError';
  readonly code = 'engine_exited';
  constructor(
    message: string,
    /** The process's exit code, when it exited. */
    readonly exitCode: number | null,
    /** The signal that ended it, e.g. `SIGKILL` (a native abort shows as `SIGABRT`). */
    readonly signal: NodeJS.Signals | null,
    /** The last lines the process wrote to stderr. */
    readonly stderrTail: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Options of {@link FramedProcess.start}. */
export interface FramedProcessOptions {
  /** Name in messages, e.g. `ONNX engine`. */
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** Receives every stderr line of the process. */
  onLog?: (line: string) => void;
  /** Called once when the process has ended, with the error pending requests got. */
  onExit?: (err: EngineExitedError) => void;
  /** Where frames travel: a socket on fd 3 (stdout is the child's log), or stdin/stdout. @default 'fd3' */
  channel?: 'fd3' | 'stdio';
  /** Frames that precede a request's final answer (e.g. progress); @default none */
  isInterim?: (frame: Frame) => boolean;
  /** The class of the exit error, for an engine that names its own (same constructor). @default EngineExitedError */
  exitErrorClass?: typeof EngineExitedError;
}

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  onInterim?: (f: Frame) => void;
}

const STDERR_TAIL_LINES = 40;

/** See the file header. */
export class FramedProcess {
  readonly #o: FramedProcessOptions;
  readonly #proc: ChildProcess;
  /** Where request frames are written and answers read: fd 3's socket both ways, or stdin and stdout. */
  readonly #in: Writable;
  readonly #out: Readable;
  readonly #decoder = new FrameDecoder();
  readonly #pending = new Map<number, Pending>();
  readonly #stderr: string[] = [];
  #partial = '';
  #nextId = 1;
  #dead: EngineExitedError | undefined;
  #failure: Error | undefined;
  readonly #exited: Promise<EngineExitedError>;

  private constructor(o: FramedProcessOptions) {
    this.#o = o;
    const stdio = o.channel === 'stdio';
    this.#proc = spawn(o.command, o.args, {
      env: o.env ?? process.env,
      stdio: stdio ? ['pipe', 'pipe', 'pipe'] : ['ignore', 'inherit', 'pipe', 'pipe'],
    });
    this.#in = (stdio ? this.#proc.stdin : this.#proc.stdio[3]) as Writable;
    this.#out = (stdio ? this.#proc.stdout : this.#proc.stdio[3]) as Readable;
    this.#out.on('data', (chunk: Buffer) => this.#onData(chunk));
    // EPIPE / ECONNRESET after the process died is reported by 'close' below; swallowed so it cannot crash the server.
    this.#in.on('error', () => undefined);
    if (stdio) this.#out.on('error', () => undefined);
    this.#proc.stderr?.setEncoding('utf8');
    this.#proc.stderr?.on('data', (text: string) => this.#onStderr(text));
    this.#exited = new Promise((resolve) => {
      let spawnError: Error | undefined;
      this.#proc.once('error', (err) => {
        spawnError = err;
        if (this.#proc.pid === undefined) resolve(this.#die(null, null, err));
      });
      this.#proc.once('close', (code, signal) => resolve(this.#die(code, signal, spawnError ?? this.#failure)));
    });
  }

  /** Spawns the process. Spawn failures surface on the first request. */
  static start(o: FramedProcessOptions): FramedProcess {
    return new FramedProcess(o);
  }

  get pid(): number | undefined {
    return this.#proc.pid;
  }

  /** Resolves, with the error requests got, when the process has ended. */
  get exited(): Promise<EngineExitedError> {
    return this.#exited;
  }

  /** Set once the process has ended. */
  get exitError(): EngineExitedError | undefined {
    return this.#dead;
  }

  /** Number of requests sent and not yet answered. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /**
   * Sends a frame built by `encode` with a fresh id; resolves with the final answer frame of that id. Interim frames
   * of that id (`isInterim`) go to `onInterim`.
   * @throws EngineExitedError when the process is or becomes gone
   */
  request(encode: (id: number) => Buffer, onInterim?: (frame: Frame) => void): Promise<Frame> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    const bytes = encode(id);
    return new Promise<Frame>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, ...(onInterim ? { onInterim } : {}) });
      this.#in.write(bytes);
    });
  }

  /** Sends a signal (tests use SIGKILL to stand for a native crash). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) this.#proc.kill(signal);
  }

  /**
   * Closes the request channel (the child exits when it sees the end) and kills it if it has not ended after
   * `graceMs` (a process stuck in native code reads nothing).
   */
  async stop(graceMs = 5000): Promise<void> {
    this.#in.end();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), graceMs);
    });
    const r = await Promise.race([this.#exited, late]);
    clearTimeout(timer);
    if (r === 'late') {
      this.kill('SIGKILL');
      await this.#exited;
    }
  }

  /** The last lines the process wrote to stderr. */
  stderrTail(): string {
    return [...this.#stderr, ...(this.#partial ? [this.#partial] : [])].join('\n');
  }

  #onData(chunk: Buffer): void {
    if (this.#failure) return;
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      // Bytes that are not frames (e.g. a native library printing to stdout) desynchronise the stream for good.
      this.#failure = err as Error;
      this.kill('SIGKILL');
      return;
    }
    for (const frame of frames) {
      const id = Number(frame.header.id);
      const p = this.#pending.get(id);
      if (!p) {
        this.#o.onLog?.(`unexpected frame ${JSON.stringify(frame.header)}`);
        continue;
      }
      if (this.#o.isInterim?.(frame)) {
        p.onInterim?.(frame);
        continue;
      }
      this.#pending.delete(id);
      p.resolve(frame);
    }
  }

  #onStderr(text: string): void {
    const lines = (this.#partial + text).split('\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) {
      this.#stderr.push(line);
      if (this.#stderr.length > STDERR_TAIL_LINES) this.#stderr.shift();
      this.#o.onLog?.(line);
    }
  }

  #die(code: number | null, signal: NodeJS.Signals | null, cause: Error | undefined): EngineExitedError {
    if (this.#dead) return this.#dead;
    const how =
      cause && this.#proc.pid === undefined
        ? `could not be started (${cause.message})`
        : cause
          ? `was stopped: ${cause.message}`
          : signal
            ? `was killed by ${signal}`
            : `exited with code ${code}`;
    const tail = this.stderrTail();
    const last = tail.split('\n').filter(Boolean).slice(-3).join(' | ');
    const ExitError = this.#o.exitErrorClass ?? EngineExitedError;
    this.#dead = new ExitError(
      `${this.#o.name} (pid ${this.#proc.pid ?? '-'}) ${how}${last ? `; last log: ${last}` : ''}`,
      code,
      signal,
      tail,
      cause ? { cause } : undefined,
    );
    for (const p of this.#pending.values()) p.reject(this.#dead);
    this.#pending.clear();
    this.#o.onExit?.(this.#dead);
    return this.#dead;
  }
}

/**
 * The child's side: reads request frames from fd 3 and writes what `handle` returns for each, as each finishes
 * (answers carry the request's id, so their order does not matter). Requests are not serialised here: like calls on
 * an in-process executor, a slow one (a mode's warm-up compiling its engine) does not hold back the others (the
 * running batch's steps). The process exits when the parent closes the socket (or dies).
 */
export function serveFrames(handle: (frame: Frame) => Promise<Buffer>): void {
  const socket = new Socket({ fd: 3, readable: true, writable: true });
  const decoder = new FrameDecoder();
  socket.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      handle(frame).then(
        (answer) => socket.write(answer),
        (err: unknown) => console.error('[engine] could not answer a request:', err),
      );
    }
  });
  // The parent is gone or asked us to stop: nothing left to serve.
  socket.on('end', () => process.exit(0));
  socket.on('error', () => process.exit(0));
}
