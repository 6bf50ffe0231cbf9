/**
 * @file Prometheus metrics of the server, on a registry of its own (so several servers in one process, as in
 * tests, do not collide). Names follow the `fluxql_` prefix; units are in the names, Prometheus style.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** Every metric the service and the transports update. */
export interface ServerMetrics {
  registry: Registry;
  /** Jobs waiting in the queue. */
  queueDepth: Gauge;
  /** Samples in the running batch. */
  runningSamples: Gauge;
  /** Engine batches started (an idle engine taking a group). Fewer than jobs means batching worked. */
  batches: Counter;
  /** Jobs that joined a running batch at a step boundary. */
  joins: Counter;
  /** Samples per engine `step` call. */
  stepBatchSize: Histogram;
  /** Wall time of one engine `step` call. */
  stepSeconds: Histogram;
  /** Submission to final event, by final status. */
  jobLatencySeconds: Histogram<'status'>;
  /** Submission to admission into a batch. */
  queueWaitSeconds: Histogram;
  /** Jobs finished, by status. */
  jobs: Counter<'status'>;
  /** Errors returned to clients or raised by the engine, by code. */
  errors: Counter<'code'>;
}

/** Creates the metrics on a fresh registry, with Node's default metrics (event loop lag included). */
export function createMetrics(): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'fluxql_' });
  const registers = [registry];
  return {
    registry,
    queueDepth: new Gauge({ name: 'fluxql_queue_depth', help: 'Jobs waiting in the queue', registers }),
    runningSamples: new Gauge({
      name: 'fluxql_running_samples',
      help: 'Samples in the running engine batch',
      registers,
    }),
    batches: new Counter({ name: 'fluxql_batches_total', help: 'Engine batches started', registers }),
    joins: new Counter({
      name: 'fluxql_batch_joins_total',
      help: 'Jobs that joined a running batch at a step boundary',
      registers,
    }),
    stepBatchSize: new Histogram({
      name: 'fluxql_step_batch_size',
      help: 'Samples per engine step call',
      buckets: [1, 2, 3, 4, 6, 8, 12, 16, 32],
      registers,
    }),
    stepSeconds: new Histogram({
      name: 'fluxql_step_duration_seconds',
      help: 'Wall time of one engine step call',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    jobLatencySeconds: new Histogram({
      name: 'fluxql_job_latency_seconds',
      help: 'Time from submission to the final event',
      labelNames: ['status'],
      buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300],
      registers,
    }),
    queueWaitSeconds: new Histogram({
      name: 'fluxql_queue_wait_seconds',
      help: 'Time from submission to admission into a batch',
      buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60],
      registers,
    }),
    jobs: new Counter({
      name: 'fluxql_jobs_total',
      help: 'Jobs finished, by status',
      labelNames: ['status'],
      registers,
    }),
    errors: new Counter({ name: 'fluxql_errors_total', help: 'Errors, by code', labelNames: ['code'], registers }),
  };
}
