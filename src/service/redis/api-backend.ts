/**
 * @file The scale-out API node's {@link JobBackend}: records in Redis, jobs handed to workers through BullMQ,
 * events from Redis pub/sub. It runs no engine. A health loop pings Redis and reads the worker adverts: the node
 * is ready while Redis answers and at least one worker is alive; it recovers by itself when Redis comes back.
 */
import { Queue, QueueEvents } from 'bullmq';
import { QueueFullError, ServiceUnavailableError } from '../errors.ts';
import { finishJob } from '../job-events.ts';
import { logJobTransition, type ServiceLogger } from '../job-log.ts';
import { isTerminal, type Job } from '../jobs.ts';
import type { BackendHealth, EngineOffer, JobBackend } from '../ports.ts';
import { liveAdverts, offerOf } from './adverts.ts';
import { encodeEvent } from './codec.ts';
import { createRedis, guarded, type RedisSettings, redactUrl, redisKeys } from './connection.ts';
import { RedisEventBus } from './event-bus.ts';
import { allInputKeys, inputFiles } from './job-inputs.ts';
import { RedisJobRecords } from './job-records.ts';

/** Options of an API node. */
export interface RedisApiOptions extends RedisSettings {
  /** Jobs no worker has taken yet beyond which submissions get QueueFullError (MAX_QUEUE_SIZE). */
  maxQueueSize: number;
  /** Seconds job records and finished BullMQ entries are kept (JOB_HISTORY_S). */
  historySeconds: number;
  log: (message: string, err?: unknown) => void;
  /** Gets the transition lines of jobs that end on the API node (cancelled before a worker took them, lost). */
  logger?: ServiceLogger;
}

/** BullMQ connection options: fail fast for producers, never give up on blocking readers. */
export function bullConnection(url: string, blocking: boolean) {
  return {
    url,
    ...(blocking ? { maxRetriesPerRequest: null } : { maxRetriesPerRequest: 1, enableOfflineQueue: false }),
    retryStrategy: (times: number) => Math.min(200 * times, 2000),
  };
}

/** Connects (without waiting for Redis: a node started before Redis becomes ready later). */
export async function createRedisApiBackend(o: RedisApiOptions): Promise<JobBackend> {
  const keys = redisKeys(o.prefix);
  const where = redactUrl(o.url);
  const onError = (err: Error) => o.log(`Redis at ${where}: ${err.message}`);
  const client = createRedis(o.url, { onError });
  const records = new RedisJobRecords(client, keys, o.url, o.historySeconds);
  const bus = new RedisEventBus(o.url, keys, onError);
  const queue = new Queue(keys.queue, { connection: bullConnection(o.url, false) });
  queue.on('error', () => {}); // reported once by `client`
  const queueEvents = new QueueEvents(keys.queue, { connection: bullConnection(o.url, true) });
  queueEvents.on('error', () => {});

  // A job that failed in BullMQ itself (stalled more often than JOB_RETRIES allows) never got a final record
  // from a worker: one API node (elected by SET NX) records the failure and tells the subscribers.
  queueEvents.on('failed', ({ jobId, failedReason }) => {
    void (async () => {
      const job = await records.get(jobId);
      if (!job || isTerminal(job)) return;
      const elected = await client.set(keys.finalized(jobId), '1', 'EX', o.historySeconds, 'NX');
      if (elected !== 'OK') return;
      const event = encodeEvent(
        finishJob(job, {
          status: 'FAILED',
          code: 'worker_lost',
          message: `The job's workers were lost: ${failedReason}`,
        }),
      );
      await records.write(client.pipeline(), job).publish(keys.events(jobId), event).exec();
      logJobTransition(o.logger, job, 'failed');
    })().catch((err) => o.log(`recording the failure of job ${jobId} failed`, err));
  });

  let health: BackendHealth = { ready: false, reason: `connecting to Redis at ${where}` };
  let offer: EngineOffer | undefined;
  let offerKey = '';
  const refresh = async () => {
    try {
      await client.ping();
      const adverts = liveAdverts(await client.hgetall(keys.workers));
      const next = offerOf(adverts);
      const key = JSON.stringify(next ?? null);
      // Keep the object while it is unchanged: the service rebuilds its catalogue on a new object.
      if (key !== offerKey) {
        offer = next;
        offerKey = key;
      }
      // A worker whose engine process is down (restarting after a crash) is alive but takes no jobs.
      const up = adverts.filter((a) => a.engineReady !== false).length;
      health =
        up > 0
          ? { ready: true, workers: up }
          : {
              ready: false,
              workers: 0,
              reason: adverts.length > 0 ? 'no engine worker has its engine up' : 'no engine worker is alive',
            };
    } catch (err) {
      health = { ready: false, reason: `Redis at ${where} is unreachable: ${(err as Error).message}` };
    }
  };
  // Give Redis a moment so a node started next to it is ready at once; a node started while Redis is down still
  // starts (not ready) and recovers through the loop below.
  await new Promise<void>((resolveReady) => {
    const t = setTimeout(resolveReady, 3000);
    client.once('ready', () => {
      clearTimeout(t);
      resolveReady();
    });
  });
  await refresh();
  const timer = setInterval(() => void refresh(), 500);
  timer.unref();

  const requireRedis = () => {
    if (client.status !== 'ready') {
      throw new ServiceUnavailableError(`Redis at ${where} is unreachable (connection ${client.status})`);
    }
  };

  return {
    jobs: records,
    events: bus,
    queue: {
      async enqueue(job: Job) {
        requireRedis();
        const files = inputFiles(job, keys); // throws on a job too large to carry, before touching Redis
        const waiting = await guarded(o.url, () => queue.getWaitingCount());
        if (waiting >= o.maxQueueSize) throw new QueueFullError(o.maxQueueSize, 5);
        if (files.length > 0) {
          // Before the record and the queue entry, so a worker never runs the job without them.
          const write = client.multi();
          for (const f of files) write.set(f.key, f.bytes, 'EX', o.historySeconds);
          await guarded(o.url, () => write.exec());
        }
        await records.save(job);
        // The BullMQ id is the job id: adding it again is a no-op, and a retry writes the same files.
        await guarded(o.url, () =>
          queue.add(
            'generate',
            { id: job.id },
            { jobId: job.id, removeOnComplete: { age: o.historySeconds }, removeOnFail: { age: o.historySeconds } },
          ),
        );
      },
      async cancel(job: Job, reason: string) {
        requireRedis();
        const entry = await guarded(o.url, () => queue.getJob(job.id));
        let removed = false;
        if (entry && (await entry.isWaiting())) {
          // Fails when a worker took it meanwhile (it is locked): then the worker is asked, below.
          removed = await entry.remove().then(
            () => true,
            () => false,
          );
        }
        if (removed) {
          const event = encodeEvent(finishJob(job, { status: 'CANCELED', reason }));
          await guarded(o.url, () =>
            records
              .write(client.pipeline(), job)
              .del(...allInputKeys(keys, job.id))
              .publish(keys.events(job.id), event)
              .exec(),
          );
          logJobTransition(o.logger, job, 'canceled');
          return;
        }
        // A worker holds it (or is about to): the key covers a worker that has not seen the message yet.
        await guarded(o.url, () =>
          client
            .pipeline()
            .set(keys.cancel(job.id), reason, 'EX', o.historySeconds)
            .publish(keys.cancelChannel, job.id)
            .exec(),
        );
      },
      async position(jobId: string) {
        requireRedis();
        const ids = await guarded(o.url, () => queue.getRanges(['wait'], 0, -1, true));
        const i = ids.indexOf(jobId);
        return i < 0 ? null : i + 1;
      },
    },
    offer: () => offer,
    health: () => health,
    async close() {
      clearInterval(timer);
      bus.close();
      await Promise.allSettled([queue.close(), queueEvents.close()]);
      client.disconnect();
    },
  };
}
