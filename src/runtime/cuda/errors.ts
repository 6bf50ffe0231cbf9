/**
 * @file Errors of the CUDA engine client. Each has a fixed `name` and a machine-readable `code`, so they keep their
 * meaning across the service layer (which only sees `Error`s) and in logs.
 */
import { EngineExitedError } from '../process/framed-process.ts';

/** The engine answered a request with an `error` frame (bad request, load failure, CUDA error). */
export class CudaEngineError extends Error {
  override name = 'CudaEngineError';
  readonly code = 'engine_error';
  constructor(
    /** The request's `op`. */
    readonly op: string,
    message: string,
    /**
     * True when the engine ends itself after this error (a device fault: the frame says `"fatal": true`). The process
     * exit follows the frame; the client then fails the other pending requests with {@link CudaEngineExitedError}.
     */
    readonly fatal: boolean,
    /**
     * A refused LoRA request: the LoRA layer's error code (`unmatched_keys`, `shape_mismatch`, `bad_rank`,
     * `non_finite`, `not_found`, `unsupported`, `bad_argument`) and the offending keys (engine layer names).
     */
    readonly lora?: { code: string; keys: string[] },
  ) {
    super(`CUDA engine ${op}: ${message}`);
  }
}

/**
 * The error an `error` frame stands for. `fatal` comes from the frame's `"fatal": true` (a device fault: the engine
 * exits after answering); engines before that field said so only by starting the message with "CUDA error".
 */
export function engineErrorFromFrame(op: string, header: { readonly [key: string]: unknown }): CudaEngineError {
  const message = String(header.message ?? 'unknown error');
  const lora =
    typeof header.lora_code === 'string'
      ? { code: header.lora_code, keys: Array.isArray(header.keys) ? header.keys.map(String) : [] }
      : undefined;
  return new CudaEngineError(op, message, header.fatal === true || message.startsWith('CUDA error'), lora);
}

/**
 * The CUDA engine process is gone (exited, killed, crashed, never started, or its output stopped making sense), so a
 * request pending on it, or sent to it afterwards, cannot be answered. The same error as the ONNX engine's process
 * ({@link EngineExitedError}: code `engine_exited`, exit code, signal, stderr tail), named for the CUDA engine.
 */
export class CudaEngineExitedError extends EngineExitedError {
  override name = 'CudaEngineExitedError';
}
