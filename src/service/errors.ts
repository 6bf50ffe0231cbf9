/**
 * @file Domain errors of the service layer. They carry plain data only; `api/` maps them onto GraphQL result
 * unions (Pothos errors plugin) and onto HTTP status codes / OpenAI error bodies.
 */
import type { LoraErrorData } from './pipeline.ts';

/** Base class so transports can tell expected, typed failures from bugs. */
export abstract class ServiceError extends Error {
  /** Stable machine-readable code, also used as the OpenAI `code` and as the metrics label. */
  abstract readonly code: string;

  constructor(message: string) {
    super(message);
    this.name = new.target.name; // the subclass's own name, e.g. `QueueFullError`
  }
}

/**
 * An input value is out of range or malformed; `field` names it in the canonical (camelCase) input. `code` is
 * `invalid_value`, or a more precise reason where a field has several (`controlImage`: the control image layer's
 * `invalid_input`, `forbidden_url`, `fetch_failed`, `missing`, ...).
 */
export class ValidationError extends ServiceError {
  constructor(
    readonly field: string,
    message: string,
    readonly code: string = 'invalid_value',
  ) {
    super(message);
  }
}

/** The bounded queue is full; the caller should retry later. */
export class QueueFullError extends ServiceError {
  readonly code = 'queue_full';
  constructor(
    readonly maxQueueSize: number,
    /** A hint for `Retry-After`, from the recent step time. */
    readonly retryAfterSeconds: number,
  ) {
    super(`The queue is full (${maxQueueSize} jobs); retry in about ${retryAfterSeconds} s`);
  }
}

/** No job (or image) with this id exists, or it has been evicted from the history. */
export class NotFoundError extends ServiceError {
  readonly code = 'not_found';
  constructor(
    readonly resource: string,
    readonly id: string,
  ) {
    super(`${resource} ${JSON.stringify(id)} not found`);
  }
}

/** The requested model id or mode is not served here; `available` lists what is. */
export class UnknownModelError extends ServiceError {
  readonly code = 'model_not_found';
  constructor(
    readonly model: string,
    readonly available: readonly string[],
    /** Why the engine does not serve this mode, when it is a known mode it declared unavailable. */
    readonly reason?: string,
  ) {
    super(
      reason
        ? `Model ${JSON.stringify(model)} is not served here: ${reason}; available: ${available.join(', ')}`
        : `Unknown model ${JSON.stringify(model)}; available: ${available.join(', ')}`,
    );
  }
}

/** A job ended without images because it was cancelled (by request or because its client went away). */
export class JobCanceledError extends ServiceError {
  readonly code = 'canceled';
  constructor(
    readonly jobId: string,
    readonly reason: string,
  ) {
    super(`Job ${jobId} was canceled: ${reason}`);
  }
}

/** A job failed inside the engine; the message is safe to show (no stack). */
export class JobFailedError extends ServiceError {
  readonly code = 'generation_failed';
  constructor(
    readonly jobId: string,
    message: string,
  ) {
    super(message);
  }
}

/** A job ran past its deadline (JOB_TIMEOUT_S) and was stopped. */
export class JobTimeoutError extends ServiceError {
  readonly code = 'timeout';
  constructor(
    readonly jobId: string,
    readonly timeoutMs: number,
  ) {
    super(`Job ${jobId} did not finish within JOB_TIMEOUT_S (${timeoutMs / 1000} s)`);
    this.name = 'JobTimeoutError';
  }
}

/**
 * The stable code a failed job records: a service error's own code, a LoRA layer's code (from the engine, which
 * runs in another process), `engine_crashed` when the engine process died holding the job (the ONNX engine's
 * supervisor, or the CUDA engine's `engine_exited`), `engine_unavailable` when none came back in time, else
 * `generation_failed`.
 */
export function failureCodeOf(err: unknown): string {
  const typed = LoraRequestError.from(err);
  if (typed instanceof ServiceError) return typed.code;
  const code = (err as { code?: unknown } | undefined)?.code;
  if (code === 'engine_crashed' || code === 'engine_exited') return 'engine_crashed';
  if (code === 'engine_unavailable') return 'engine_unavailable';
  return 'generation_failed';
}

/** A dependency the request needs is down (Redis unreachable, no engine worker registered); retry later. */
export class ServiceUnavailableError extends ServiceError {
  readonly code = 'unavailable';
  constructor(
    message: string,
    /** A hint for `Retry-After`. */
    readonly retryAfterSeconds = 5,
  ) {
    super(message);
  }
}

/**
 * A LoRA file or LoRA set cannot be used: `code` is the LoRA layer's reason (`not_found`, `forbidden_path`,
 * `invalid_file`, `unmatched_keys`, `shape_mismatch`, `bad_rank`, `non_finite`, `unsupported`, `bad_argument`).
 */
export class LoraRequestError extends ServiceError {
  constructor(
    readonly code: string,
    message: string,
    /** The LoRA at fault, when there is one. */
    readonly lora: string | null = null,
    /** Offending tensor keys (`unmatched_keys`, `shape_mismatch`, `non_finite`). */
    readonly keys: readonly string[] = [],
  ) {
    super(message);
  }

  /** The service error of a LoRA layer error's data (see {@link LoraErrorData}). */
  static of(data: LoraErrorData): LoraRequestError {
    return new LoraRequestError(data.code, data.message, data.lora ?? null, [...data.keys]);
  }

  /**
   * The typed form of a LoRA layer error (a `LoraError` thrown in-thread, or one restored from the pipeline worker
   * with its `code`); any other error is returned unchanged.
   */
  static from(err: unknown): unknown {
    if (!(err instanceof Error) || err.name !== 'LoraError') return err;
    const e = err as Error & { code?: unknown; lora?: unknown; keys?: unknown };
    if (typeof e.code !== 'string') return err;
    return LoraRequestError.of({
      code: e.code as LoraErrorData['code'],
      message: e.message,
      ...(typeof e.lora === 'string' ? { lora: e.lora } : {}),
      keys: Array.isArray(e.keys) ? e.keys.map(String) : [],
    });
  }
}
