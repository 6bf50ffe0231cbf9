/**
 * @file Progress events of jobs and a tiny in-process pub/sub for them. Each subscriber gets its own unbounded
 * buffer: steps are few (tens per job), so slow readers cost little, and nothing is dropped.
 */
import { elapsedMs, type Job, type StoredImage } from './jobs.ts';

/** What `jobProgress` streams. `snapshot` comes first; a terminal event comes last. */
export type JobEvent =
  | { type: 'snapshot'; job: Job; queuePosition: number | null; elapsedMs: number; etaMs?: number }
  | { type: 'started'; jobId: string; totalSteps: number; elapsedMs: number }
  /** Scale-out only: the engine running the job was lost; another one starts it again from step 0. */
  | { type: 'retrying'; jobId: string; attempt: number; reason: string; elapsedMs: number }
  | {
      type: 'step';
      jobId: string;
      step: number;
      totalSteps: number;
      elapsedMs: number;
      etaMs?: number;
      /** URL path of a low-resolution preview, when the job asked for previews. */
      previewPath?: string;
    }
  | { type: 'succeeded'; jobId: string; images: StoredImage[]; elapsedMs: number }
  | { type: 'failed'; jobId: string; code: string; message: string; elapsedMs: number }
  | { type: 'canceled'; jobId: string; reason: string; elapsedMs: number };

/** An event that ends its job's stream. */
export type TerminalJobEvent = Extract<JobEvent, { type: 'succeeded' | 'failed' | 'canceled' }>;

/** Whether an event ends its job's stream. */
export function isTerminalEvent(e: JobEvent): e is TerminalJobEvent {
  return e.type === 'succeeded' || e.type === 'failed' || e.type === 'canceled';
}

/** How a job ends. */
export type JobOutcome =
  | { status: 'SUCCEEDED' }
  | { status: 'CANCELED'; reason: string }
  | { status: 'FAILED'; code: string; message: string };

/**
 * Records `outcome` on `job` (status, end time, and the cancel reason or error) and returns the event announcing
 * it: every backend ends jobs through here, so the record and the event cannot disagree.
 */
export function finishJob(job: Job, outcome: JobOutcome): TerminalJobEvent {
  job.status = outcome.status;
  job.finishedAt = new Date();
  if (outcome.status === 'CANCELED') job.cancelReason = outcome.reason;
  if (outcome.status === 'FAILED') job.error = { code: outcome.code, message: outcome.message };
  return terminalEvent(job);
}

/** The terminal event matching a terminal job's record. */
export function terminalEvent(job: Job): TerminalJobEvent {
  const base = { jobId: job.id, elapsedMs: elapsedMs(job) };
  if (job.status === 'SUCCEEDED') return { type: 'succeeded', ...base, images: job.images };
  if (job.status === 'CANCELED') return { type: 'canceled', ...base, reason: job.cancelReason ?? 'canceled' };
  return { type: 'failed', ...base, code: job.error?.code ?? 'generation_failed', message: job.error?.message ?? '' };
}

/**
 * A push-fed async iterator. Unlike an async generator, `return()` resolves at once even while the consumer is
 * waiting, which is what lets a closed WebSocket/SSE stream unsubscribe immediately.
 */
export class Channel<T> implements AsyncIterableIterator<T> {
  readonly #buffer: T[] = [];
  #waiting: ((r: IteratorResult<T>) => void) | undefined;
  #done = false;
  readonly #onClose: () => void;

  constructor(onClose: () => void = () => {}) {
    this.#onClose = onClose;
  }

  push(value: T): void {
    if (this.#done) return;
    const w = this.#waiting;
    if (w) {
      this.#waiting = undefined;
      w({ value, done: false });
    } else {
      this.#buffer.push(value);
    }
  }

  /** Ends the stream after the buffered values. */
  end(): void {
    if (this.#done) return;
    this.#done = true;
    this.#onClose();
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<T>> {
    const v = this.#buffer.shift();
    if (v !== undefined) return Promise.resolve({ value: v, done: false });
    if (this.#done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.#waiting = resolve;
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.#buffer.length = 0;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}

/** Per-job topics; `publish` is synchronous so a subscriber that snapshots right after subscribing misses nothing. */
export class JobEventHub {
  readonly #topics = new Map<string, Set<(e: JobEvent) => void>>();

  publish(jobId: string, event: JobEvent): void {
    const listeners = this.#topics.get(jobId);
    if (!listeners) return;
    for (const l of [...listeners]) l(event);
  }

  /** Starts listening; the returned function stops. */
  listen(jobId: string, listener: (e: JobEvent) => void): () => void {
    let set = this.#topics.get(jobId);
    if (!set) {
      set = new Set();
      this.#topics.set(jobId, set);
    }
    set.add(listener);
    return () => {
      const s = this.#topics.get(jobId);
      if (!s) return;
      s.delete(listener);
      if (s.size === 0) this.#topics.delete(jobId);
    };
  }

  /** Number of live listeners of a job (tests, and to skip preview work nobody watches). */
  listenerCount(jobId: string): number {
    return this.#topics.get(jobId)?.size ?? 0;
  }
}
