/**
 * @file `createFluxExecutor`: the {@link StepExecutor} the server uses — the ONNX pipeline in a supervised child
 * process (`host.ts`, `client.ts`, `../supervisor.ts`).
 */
import { type SupervisedExecutor, superviseEngine } from '../supervisor.ts';
import { type OnnxEngineOptions, startOnnxEngine } from './client.ts';

export type { EngineInstance, OnnxEngineOptions } from './client.ts';

/** Options of {@link createFluxExecutor}. */
export type FluxProcessExecutorOptions = OnnxEngineOptions & {
  /** Supervisor messages (deaths, restarts). @default written to stderr */
  log?: (message: string) => void;
  /** First restart delay in ms (see `superviseEngine`). */
  restartBackoffMs?: number;
};

/** Starts the engine process, waits until the model is loaded, and supervises it from then on. */
export function createFluxExecutor(options: FluxProcessExecutorOptions): Promise<SupervisedExecutor> {
  const { log, restartBackoffMs, ...engine } = options;
  return superviseEngine({
    name: 'ONNX engine',
    start: () => startOnnxEngine(engine),
    log: log ?? ((m) => console.error(`[fluxql] ${m}`)),
    ...(restartBackoffMs !== undefined ? { backoffMs: restartBackoffMs } : {}),
  });
}
