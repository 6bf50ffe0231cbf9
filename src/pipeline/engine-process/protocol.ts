/**
 * @file The ONNX engine process's requests: one frame per call (`runtime/process/message-codec.ts`), `op` the
 * method, `body` its arguments; the answer is a `result` frame with the value or an `error` frame with the
 * serialized error (`engine-errors.ts`). `start` comes first, with the executor options; it answers the model info.
 */
import type { StepExecutor } from '../executor.ts';

/** The executor methods the engine process serves, besides `start`. */
export const ENGINE_METHODS = [
  'prepare',
  'step',
  'decode',
  'release',
  'close',
  'loras',
  'checkLoras',
  'loadLora',
  'unloadLora',
  'activeLoras',
  'stats',
  'modePlans',
  'warm',
] as const satisfies readonly (keyof StepExecutor)[];

export type EngineMethod = (typeof ENGINE_METHODS)[number];

export function isEngineMethod(op: string): op is EngineMethod {
  return (ENGINE_METHODS as readonly string[]).includes(op);
}
