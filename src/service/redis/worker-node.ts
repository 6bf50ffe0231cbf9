/**
 * @file The scale-out worker: one engine (one GPU or process) pulling jobs from BullMQ into the same
 * {@link Scheduler} the single-process server uses, and mirroring every event to Redis (record, then pub/sub).
 *
 * NOTE(scale-out): how work and failures flow.
 * - BullMQ concurrency is the batch size, so a worker holds at most MODEL_BATCH jobs; the local scheduler batches
 *   the compatible ones and lets the others wait for the running batch, exactly as in one process.
 * - Delivery is at-least-once. A worker that dies stops renewing its locks; another worker's stalled check puts
 *   the job back (JOB_RETRIES times, then BullMQ fails it and an API node records the failure). The worker that
 *   picks it up again sees `attemptsStarted > 1`, publishes a `retrying` event and runs it from step 0. Output
 *   names depend on the job id only, so a retry overwrites the same files.
 * - A record already terminal is never run again (a duplicate delivery returns at once).
 */
import { hostname } from 'node:os';
import { type Job as BullJob, WaitingError, Worker } from 'bullmq';
import { ImageStore, type ImageStoreOptions } from '../image-store.ts';
import { finishJob, isTerminalEvent, type JobEvent, JobEventHub } from '../job-events.ts';
import type { ServiceLogger } from '../job-log.ts';
import { elapsedMs, isTerminal, type Job, JobStore } from '../jobs.ts';
import { MeasuredStats } from '../measured.ts';
import { createMetrics } from '../metrics.ts';
import { type WarmModes, warmOrder } from '../mode-warmup.ts';
import type { ServedEngine } from '../ports.ts';
import { Scheduler } from '../scheduler.ts';
import { HEARTBEAT_MS, type WorkerAdvert } from './adverts.ts';
import { bullConnection } from './api-backend.ts';
import { decodeJob, encodeEvent, encodeJob } from './codec.ts';
import { createRedis, type RedisSettings, redactUrl, redisKeys } from './connection.ts';
import { allInputKeys, expectedInputs, loadInputs } from './job-inputs.ts';
import { RedisJobRecords } from './job-records.ts';

/** Options of a worker process. */
export interface RedisWorkerOptions extends RedisSettings, ServedEngine {
  /** Seconds records are kept (JOB_HISTORY_S). */
  historySeconds: number;
  /** BullMQ lock: a dead worker's jobs come back after about this long (WORKER_LOCK_MS). @default 30000 */
  lockMs: number;
  /** How often a job may be started again after its worker was lost (JOB_RETRIES). @default 1 */
  retries: number;
  /** @default `<hostname>-<pid>` */
  workerId?: string;
  /** The shared image directory (IMAGE_DIR, mounted on every node). */
  images: ImageStoreOptions;
  /** Modes warmed in the background from the start besides the default one (WARM_MODES). @default 'all' */
  warmModes?: WarmModes;
  log: (message: string, err?: unknown) => void;
  /** Gets one line per job start and end (`job-log.ts`). */
  logger?: ServiceLogger;
}

/** A running worker. */
export interface RunningWorker {
  id: string;
  /** Stops taking jobs, lets the held ones finish, then closes the engine and the connections. */
  close(): Promise<void>;
}

/** Registers the worker and starts pulling jobs. */
export async function startRedisWorker(o: RedisWorkerOptions): Promise<RunningWorker> {
  const id = o.workerId ?? `${hostname()}-${process.pid}`;
  const keys = redisKeys(o.prefix);
  const onError = (err: Error) => o.log(`Redis at ${redactUrl(o.url)}: ${err.message}`);
  const client = createRedis(o.url, { onError });
  const records = new RedisJobRecords(client, keys, o.url, o.historySeconds);
  const store = new JobStore(o.batchSize * 4);
  const hub = new JobEventHub();
  const images = await ImageStore.create(o.images);
  const scheduler = new Scheduler({
    warmModes: warmOrder(o.executor.info().capabilities.modes, o.defaultSize, o.warmModes),
    executor: o.executor,
    store,
    events: hub,
    images,
    metrics: createMetrics(),
    measured: new MeasuredStats(),
    policy: { maxBatch: o.batchSize, maxQueueDelayMs: o.maxQueueDelayMs },
    // BullMQ concurrency already bounds what this worker holds.
    maxQueueSize: Number.MAX_SAFE_INTEGER,
    log: o.log,
    ...(o.logger ? { logger: o.logger } : {}),
  });

  // Cancellation requests from API nodes, for jobs this worker holds.
  const cancels = createRedis(o.url, { subscriber: true, onError });
  /** True while the engine is down (see below). */
  let paused = false;
  cancels.on('message', (_channel: string, jobId: string) => {
    const job = store.get(jobId);
    if (!job || isTerminal(job)) return;
    void client.get(keys.cancel(jobId)).then(
      (reason) => scheduler.cancel(job, reason ?? 'canceled by client'),
      () => scheduler.cancel(job, 'canceled by client'),
    );
  });
  await cancels.subscribe(keys.cancelChannel);

  const advert = (): string =>
    JSON.stringify({
      id,
      info: o.executor.info(),
      batchSize: o.batchSize,
      defaultSize: o.defaultSize,
      engineReady: o.executor.health?.().ready ?? true,
      at: Date.now(),
    } satisfies WorkerAdvert);
  await client.hset(keys.workers, id, advert());
  const heartbeat = setInterval(() => {
    client.hset(keys.workers, id, advert()).catch(() => {});
  }, HEARTBEAT_MS);
  heartbeat.unref();

  const run = async (bullJob: BullJob, token?: string) => {
    if (paused) {
      // Pausing cannot stop the fetch already blocked in Redis: it may hand over one job. Give it back at once for
      // a worker whose engine is up (WaitingError: BullMQ leaves the job in wait).
      await bullJob.moveToWait(token);
      throw new WaitingError();
    }
    return runJob(bullJob, { o, keys, client, records, store, hub, scheduler });
  };
  const worker = new Worker(keys.queue, run, {
    connection: bullConnection(o.url, true),
    name: id,
    concurrency: o.batchSize,
    lockDuration: o.lockMs,
    stalledInterval: o.lockMs,
    maxStalledCount: o.retries,
    removeOnComplete: { age: o.historySeconds },
    removeOnFail: { age: o.historySeconds },
  });
  worker.on('error', () => {}); // reported once by `client`
  worker.on('failed', (job, err) => o.log(`job ${job?.id ?? '?'} failed in BullMQ`, err));
  await worker.waitUntilReady();

  // While the engine process is down (crashed, restarting) take no jobs: BullMQ stops fetching, so the queue's jobs
  // go to other workers or wait; the jobs this worker holds fail (`engine_crashed`) or wait for the engine inside
  // the scheduler. Taking jobs resumes when the engine is back. Adverts carry the state at once.
  const unwatch = o.executor.onHealth?.((h) => {
    if (closing) return;
    if (!h.ready && !paused) {
      paused = true;
      o.log(`engine down (${h.reason ?? 'no reason given'}): worker ${id} stops taking jobs`);
      void worker.pause(true).catch((err) => o.log('pausing the BullMQ worker failed', err));
    } else if (h.ready && paused) {
      paused = false;
      o.log(`engine back: worker ${id} takes jobs again`);
      void worker.resume();
    }
    client.hset(keys.workers, id, advert()).catch(() => {});
  });

  let closing: Promise<void> | undefined;
  return {
    id,
    close: () => {
      closing ??= (async () => {
        clearInterval(heartbeat);
        unwatch?.();
        await worker.close();
        await scheduler.close();
        await o.executor.close();
        images.close();
        await client.hdel(keys.workers, id).catch(() => {});
        cancels.disconnect();
        client.disconnect();
      })();
      return closing;
    },
  };
}

interface RunContext {
  o: RedisWorkerOptions;
  keys: ReturnType<typeof redisKeys>;
  client: ReturnType<typeof createRedis>;
  records: RedisJobRecords;
  store: JobStore;
  hub: JobEventHub;
  scheduler: Scheduler;
}

/** The BullMQ processor: one job through the local scheduler; resolves with its final status. */
async function runJob(bullJob: BullJob, c: RunContext): Promise<{ status: string }> {
  const jobId = bullJob.id ?? '';
  const record = await c.records.get(jobId);
  // Expired, or finished by an earlier delivery: nothing to do (at-least-once delivery).
  if (!record) return { status: 'MISSING' };
  if (isTerminal(record)) return { status: record.status };

  // A fresh run: whatever an earlier attempt left in the record starts over.
  const job: Job = {
    id: record.id,
    request: record.request,
    status: 'QUEUED',
    createdAt: record.createdAt,
    step: 0,
    totalSteps: record.totalSteps,
    images: [],
    ...(record.hasControlImage ? { hasControlImage: true } : {}),
    // Who owns it (API keys scope every read of the record) and its deadline (JOB_TIMEOUT_S) stay with the job.
    ...(record.owner !== undefined ? { owner: record.owner } : {}),
    ...(record.timeoutMs !== undefined ? { timeoutMs: record.timeoutMs } : {}),
  };

  // Every event goes to Redis in order, the record first, on one connection (so in order on the wire too).
  let chain: Promise<unknown> = Promise.resolve();
  const mirror = (e: Exclude<JobEvent, { type: 'snapshot' }>) => {
    const snapshot = decodeJob(encodeJob(job));
    chain = chain
      .then(() => c.records.write(c.client.pipeline(), snapshot).publish(c.keys.events(jobId), encodeEvent(e)).exec())
      .catch((err) => c.o.log(`mirroring an event of job ${jobId} to Redis failed`, err));
  };

  const cancelReason = await c.client.get(c.keys.cancel(jobId));
  if (cancelReason) {
    mirror(finishJob(job, { status: 'CANCELED', reason: cancelReason }));
    await chain;
    return { status: job.status };
  }
  // Started before (a job handed back unstarted by a worker whose engine was down is not a retry).
  if (bullJob.attemptsStarted > 1 && record.startedAt) {
    mirror({
      type: 'retrying',
      jobId,
      attempt: bullJob.attemptsStarted,
      reason: 'the worker running it was lost',
      elapsedMs: elapsedMs(job),
    });
  }

  const inputs = expectedInputs(job);
  if (inputs.length > 0) {
    try {
      await loadInputs(job, c.keys, (key) => c.client.getBuffer(key));
    } catch (err) {
      const message = (err as Error).message;
      mirror(finishJob(job, { status: 'FAILED', code: 'generation_failed', message }));
      await chain;
      return { status: job.status };
    }
  }

  let stop = () => {};
  const final = new Promise<JobEvent>((resolve) => {
    stop = c.hub.listen(jobId, (e) => {
      if (e.type === 'snapshot') return;
      mirror(e);
      if (isTerminalEvent(e)) resolve(e);
    });
  });
  c.store.add(job);
  try {
    c.scheduler.submit(job);
    await final;
  } finally {
    stop();
    await chain;
  }
  if (inputs.length > 0 && isTerminal(job)) await c.client.del(...allInputKeys(c.keys, jobId)).catch(() => 0);
  return { status: job.status };
}
