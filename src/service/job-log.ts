/**
 * @file One structured log line per job transition (queued, started, succeeded, failed, canceled), naming the job
 * and what it is (mode, size, steps, images) and how long it took. The logger is handed in (the process's pino
 * logger, created in `src/log.ts`); this layer only needs pino's `info(fields, message)` shape.
 */
import { elapsedMs, type Job } from './jobs.ts';

/** The part of pino's logger the service layer uses. */
export interface ServiceLogger {
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

/** A job's lifecycle points that get a line. */
export type JobTransition = 'queued' | 'started' | 'succeeded' | 'failed' | 'canceled';

/**
 * Logs a transition. `durationMs` is the time since submission: the queue wait for `started`, the whole job for
 * the terminal ones; `runMs` (terminal, once started) is the time since it started.
 */
export function logJobTransition(log: ServiceLogger | undefined, job: Job, transition: JobTransition): void {
  if (!log) return;
  const r = job.request;
  const fields: Record<string, unknown> = {
    jobId: job.id,
    event: `job.${transition}`,
    mode: r.model.mode,
    size: `${r.width}x${r.height}`,
    steps: r.steps,
    images: r.numImages,
    durationMs: transition === 'queued' ? 0 : elapsedMs(job),
  };
  if (job.startedAt && transition !== 'queued' && transition !== 'started') {
    fields.runMs = (job.finishedAt ?? new Date()).getTime() - job.startedAt.getTime();
  }
  if (job.batchId) fields.batchId = job.batchId;
  if (transition === 'failed') fields.error = job.error;
  if (transition === 'canceled') fields.reason = job.cancelReason;
  if (transition === 'failed') log.warn(fields, `job ${transition}`);
  else log.info(fields, `job ${transition}`);
}
