/**
 * @file The ONNX engine process's requests: one frame per call (`runtime/process/message-codec.ts`), `op` the
 * method, `body` its arguments; the answer is a `result` frame with the value or an `error` frame with the
 * serialized error (`engine-errors.ts`). `start` comes first, with the executor options; it answers the model info.
 */
import type { LoraAdminPort, StepExecutor } from '../executor.ts';

/** The executor methods the engine process serves, besides `start`. */
export const EXECUTOR_METHODS = [
  'prepare',
  'step',
  'decode',
  'release',
  'close',
  'stats',
  'modePlans',
  'warm',
] as const satisfies readonly (keyof StepExecutor)[];

/** The LoRA administration port's methods, served when the engine has the port. */
export const LORA_METHODS = [
  'loras',
  'checkLoras',
  'loadLora',
  'unloadLora',
  'activeLoras',
] as const satisfies readonly (keyof LoraAdminPort)[];

export type ExecutorMethod = (typeof EXECUTOR_METHODS)[number];
export type LoraMethod = (typeof LORA_METHODS)[number];
export type EngineMethod = ExecutorMethod | LoraMethod;

export function isExecutorMethod(op: string): op is ExecutorMethod {
  return (EXECUTOR_METHODS as readonly string[]).includes(op);
}

export function isLoraMethod(op: string): op is LoraMethod {
  return (LORA_METHODS as readonly string[]).includes(op);
}
