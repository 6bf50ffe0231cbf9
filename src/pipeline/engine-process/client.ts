/**
 * @file {@link startOnnxEngine}: one ONNX engine child process (`entry.ts`, `host.ts`) as a {@link StepExecutor}. It dies for
 * good with its process: every pending call and every later one then rejects with the process's
 * `EngineExitedError`. Restarting is the supervisor's job (`../supervisor.ts`).
 */
import { decodeMessage, type EngineExitedError, encodeMessage, FramedProcess } from '../../runtime/process/index.ts';
import { resolveEntryModule } from '../../shared/entry-module.ts';
import { ExecutorError, type SerializedError } from '../engine-errors.ts';
import type { LoraAdminPort, ModelInfo, StepExecutor } from '../executor.ts';
import type { FluxExecutorOptions } from '../flux/executor.ts';
import type { EngineMethod } from './protocol.ts';

/** An executor bound to one engine process. */
export interface EngineInstance extends StepExecutor {
  /** The process id (undefined when it could not be spawned). */
  readonly pid: number | undefined;
  /** Resolves when the process has ended, however it ended, with the error calls got. */
  readonly exited: Promise<Error>;
  /** Sends a signal to the process (tests: SIGKILL stands for a native crash). */
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Options of {@link startOnnxEngine}: the executor's, minus callbacks and the compiler (they cannot cross a process;
 * the child's entry brings its own compiler).
 */
export type OnnxEngineOptions = Omit<FluxExecutorOptions, 'onLog' | 'compiler'> & {
  /** Lines the engine process writes to stderr. @default written to this process's stderr */
  onLog?: (line: string) => void;
  /** Environment of the engine process. @default process.env */
  env?: NodeJS.ProcessEnv;
};

/** Starts the process and waits until the model is loaded (engines compiled or taken from the cache). */
export async function startOnnxEngine(options: OnnxEngineOptions): Promise<EngineInstance> {
  const { onLog, env, ...executorOptions } = options;
  // A compiled build runs entry.js directly; from sources the child gets the tsx loader (`--import tsx`).
  const entry = resolveEntryModule('./entry.ts', import.meta.url);
  const proc = FramedProcess.start({
    name: 'ONNX engine',
    command: process.execPath,
    args: entry.nodeArgs,
    ...(env ? { env } : {}),
    onLog: onLog ?? ((line) => process.stderr.write(`[onnx-engine] ${line}\n`)),
  });
  const call = async <T>(method: EngineMethod | 'start', args: unknown[]): Promise<T> => {
    // A trailing `undefined` would arrive as null (JSON) and defeat the callee's default parameter.
    while (args.length > 0 && args.at(-1) === undefined) args.pop();
    const frame = await proc.request((id) => encodeMessage(method, id, args));
    if (frame.header.op === 'error') throw new ExecutorError(frame.header.error as SerializedError);
    return decodeMessage(frame) as T;
  };
  let info: ModelInfo;
  try {
    info = await call<ModelInfo>('start', [executorOptions]);
  } catch (err) {
    await proc.stop(1000);
    throw err;
  }
  const exited = proc.exited.then((e: EngineExitedError) => e as Error);
  return {
    get pid() {
      return proc.exitError ? undefined : proc.pid;
    },
    exited,
    kill: (signal) => proc.kill(signal),
    info: () => info,
    prepare: (requests) => call('prepare', [requests]),
    step: (handles, opts) => call('step', [handles, opts]),
    decode: (handles) => call('decode', [handles]),
    release: (handles) => call('release', [handles]),
    ...(info.capabilities.lora
      ? {
          loraAdmin: {
            loras: () => call('loras', []),
            checkLoras: (set, mode) => call('checkLoras', [set, mode]),
            loadLora: (name, strength) => call('loadLora', [name, strength]),
            unloadLora: (name) => call('unloadLora', [name]),
            activeLoras: () => call('activeLoras', []),
          } satisfies LoraAdminPort,
        }
      : {}),
    stats: () => call('stats', []),
    modePlans: () => call('modePlans', []),
    warm: (mode) => call('warm', [mode]),
    async close() {
      if (!proc.exitError) await call('close', []).catch(() => undefined);
      await proc.stop();
    },
  };
}
