/**
 * @file Single-process mode: the {@link JobBackend} ports over in-memory state. Jobs live in a {@link JobStore},
 * the {@link Scheduler} is the queue, and the in-process {@link JobEventHub} carries progress. Needs no Redis.
 */
import type { ImageStore } from './image-store.ts';
import { JobEventHub } from './job-events.ts';
import { type Job, JobStore } from './jobs.ts';
import type { MeasuredStats } from './measured.ts';
import type { ServerMetrics } from './metrics.ts';
import type { StepExecutor } from './pipeline.ts';
import type { EngineOffer, JobBackend } from './ports.ts';
import { Scheduler } from './scheduler.ts';

/** What the local backend needs. */
export interface LocalBackendOptions {
  executor: StepExecutor;
  batchSize: number;
  defaultSize: string;
  maxQueueDelayMs: number;
  maxQueueSize: number;
  maxFinishedJobs?: number;
  images: ImageStore;
  metrics: ServerMetrics;
  measured: MeasuredStats;
  log?: (message: string, err: unknown) => void;
}

/** The scheduler over one executor, with jobs and events in memory. Closing it closes the executor. */
export function createLocalBackend(o: LocalBackendOptions): JobBackend {
  const store = new JobStore(o.maxFinishedJobs);
  const hub = new JobEventHub();
  const scheduler = new Scheduler({
    executor: o.executor,
    store,
    events: hub,
    images: o.images,
    metrics: o.metrics,
    measured: o.measured,
    policy: { maxBatch: o.batchSize, maxQueueDelayMs: o.maxQueueDelayMs },
    maxQueueSize: o.maxQueueSize,
    ...(o.log ? { log: o.log } : {}),
  });
  const offer: EngineOffer = { info: o.executor.info(), batchSize: o.batchSize, defaultSize: o.defaultSize };
  let closed = false;
  return {
    jobs: {
      get: async (id) => store.get(id),
      list: async (statuses) => store.list(statuses),
    },
    queue: {
      async enqueue(job: Job) {
        // Queue first: a full queue must not leave a record behind.
        scheduler.submit(job);
        store.add(job);
      },
      async cancel(job, reason) {
        scheduler.cancel(job, reason);
      },
      position: async (jobId) => scheduler.queuePosition(jobId),
    },
    events: {
      // Publishing is synchronous here, so the subscription is live as soon as this returns.
      subscribe: async (jobId, listener) => hub.listen(jobId, listener),
    },
    offer: () => offer,
    health: () => (closed ? { ready: false, reason: 'shutting down' } : { ready: true }),
    async close() {
      closed = true;
      await scheduler.close();
      await o.executor.close();
    },
  };
}
