/**
 * @file The ONNX engine child process's work (started by `entry.ts`): hosts the in-process executor (the FLUX
 * pipeline and its ORT sessions) and answers framed requests on fd 3 (`protocol.ts`). ORT's native `run` blocks this process's thread
 * for the whole kernel call, and a native abort inside ORT ends only this process: the server's event loop and its
 * other jobs live in the parent, whose supervisor restarts this process (`../supervisor.ts`).
 */
import { decodeMessage, encodeMessage, serveFrames } from '../../runtime/process/index.ts';
import { serializeError } from '../engine-errors.ts';
import type { StepExecutor } from '../executor.ts';
import type { EngineCompilerPort } from '../flux/compiler-port.ts';
import { createInThreadExecutor } from '../flux/executor.ts';
import type { OnnxEngineOptions } from './client.ts';
import { isExecutorMethod, isLoraMethod } from './protocol.ts';

/** Answers the parent's frames until fd 3 closes; the pipeline builds its engines with `compiler`. */
export function serveEngineHost(compiler: EngineCompilerPort): void {
  let executor: StepExecutor | undefined;
  serveFrames(async (frame) => {
    const id = Number(frame.header.id);
    const op = frame.header.op;
    try {
      const args = decodeMessage(frame) as unknown[];
      if (op === 'start') {
        if (executor) throw new Error('the engine process is already started');
        // The options crossed the process as JSON (no callbacks): the compiler is this process's own.
        executor = await createInThreadExecutor({ ...(args[0] as OnnxEngineOptions), compiler });
        return encodeMessage('result', id, executor.info());
      }
      if (!executor) throw new Error('the engine process has not been started');
      const target: object | undefined = isExecutorMethod(op)
        ? executor
        : isLoraMethod(op)
          ? executor.loraAdmin
          : undefined;
      const method = (target as Record<string, unknown> | undefined)?.[op];
      if (typeof method !== 'function') throw new Error(`the engine process has no method ${op}`);
      const value = await (method as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      return encodeMessage('result', id, value ?? null);
    } catch (err) {
      return encodeMessage('error', id, null, { error: serializeError(err) });
    }
  });
}
