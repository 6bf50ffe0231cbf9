/**
 * @file Errors across the engine process boundary, and the engine's own failures. Frames carry JSON, which drops an
 * Error's class, so the name and the typed fields (`param`, `file`, and a `LoraError`'s `code`, `lora`, `keys`) are
 * carried explicitly and restored as {@link ExecutorError}. {@link EngineCrashedError} and
 * {@link EngineUnavailableError} are what the supervisor (`supervisor.ts`) fails calls with when the engine process
 * dies or is not back.
 */

export interface SerializedError {
  name: string;
  message: string;
  param?: string;
  file?: string;
  /** Machine-readable reason, e.g. a `LoraError`'s `not_found`. */
  code?: string;
  /** The LoRA at fault (`LoraError`). */
  lora?: string;
  /** Offending tensor keys (`LoraError`). */
  keys?: string[];
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof Error) {
    const e = err as Error & { param?: unknown; file?: unknown; code?: unknown; lora?: unknown; keys?: unknown };
    return {
      name: e.name,
      message: e.message,
      ...(typeof e.param === 'string' ? { param: e.param } : {}),
      ...(typeof e.file === 'string' ? { file: e.file } : {}),
      ...(typeof e.code === 'string' ? { code: e.code } : {}),
      ...(typeof e.lora === 'string' ? { lora: e.lora } : {}),
      ...(Array.isArray(e.keys) && e.keys.length > 0 ? { keys: e.keys.map(String) } : {}),
    };
  }
  return { name: 'Error', message: String(err) };
}

/** An error raised inside the engine process, with its original class name and typed fields. */
export class ExecutorError extends Error {
  readonly param?: string;
  readonly file?: string;
  readonly code?: string;
  readonly lora?: string;
  readonly keys: readonly string[];
  constructor(e: SerializedError) {
    super(e.message);
    this.name = e.name;
    this.param = e.param;
    this.file = e.file;
    this.code = e.code;
    this.lora = e.lora;
    this.keys = e.keys ?? [];
  }

  /** True for errors caused by the request itself (bad size, steps, prompt...) rather than the engine. */
  get isInvalidInput(): boolean {
    return this.param !== undefined;
  }
}

/** The engine process died (native crash, out of memory, kill) while holding this call or the samples it names. */
export class EngineCrashedError extends Error {
  override name = 'EngineCrashedError';
  readonly code = 'engine_crashed';
}

/** No engine process is up (it died and its restart has not succeeded in time, or the executor is closed). */
export class EngineUnavailableError extends Error {
  override name = 'EngineUnavailableError';
  readonly code = 'engine_unavailable';
}
