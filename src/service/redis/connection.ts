/**
 * @file Redis clients and key names of the scale-out mode. Commands fail fast while Redis is down (no offline
 * queue), so requests get a clear {@link ServiceUnavailableError} instead of hanging; clients reconnect on their own.
 */
import { Redis } from 'ioredis';
import { ServiceUnavailableError } from '../errors.ts';

/** Where the scale-out state lives. */
export interface RedisSettings {
  /** `redis://[user:pass@]host:port[/db]` (REDIS_URL). */
  url: string;
  /** Prefix of every key, channel and BullMQ queue, so several deployments can share a Redis. @default 'fluxql' */
  prefix: string;
}

/** Key and channel names, all under the prefix. */
export function redisKeys(prefix: string) {
  return {
    /** String: the JSON record of a job. */
    job: (id: string) => `${prefix}:job:${id}`,
    /** Sorted set: job ids by creation time (ms), for `jobs`. */
    index: `${prefix}:jobs`,
    /** Binary string: the control image file of a job (`Job.hasControlImage`), as the API node received it. */
    controlImage: (id: string) => `${prefix}:control:${id}`,
    /** Binary string: the img2img / inpainting input image file of a job (`request.edit`), as received. */
    editImage: (id: string) => `${prefix}:edit-image:${id}`,
    /** Binary string: the inpainting mask file of a job (`request.edit === 'inpaint'`), as received. */
    editMask: (id: string) => `${prefix}:edit-mask:${id}`,
    /** String: a cancellation request (its reason) for a job an engine may hold. */
    cancel: (id: string) => `${prefix}:cancel:${id}`,
    /** String set with NX: elects the one node that records a job's final failure. */
    finalized: (id: string) => `${prefix}:finalized:${id}`,
    /** Hash: worker id → JSON {@link WorkerAdvert}. */
    workers: `${prefix}:workers`,
    /** Pub/sub channel of one job's events. */
    events: (id: string) => `${prefix}:events:${id}`,
    /** Pub/sub channel of cancellation requests (message: job id). */
    cancelChannel: `${prefix}:cancel`,
    /** BullMQ queue name (BullMQ adds its own `bull:` key prefix). */
    queue: `${prefix}-jobs`,
  };
}

/** Keys of one deployment. */
export type RedisKeys = ReturnType<typeof redisKeys>;

/**
 * A client for commands (`subscriber: true` for pub/sub). Errors are reported through `onError` once per outage
 * rather than thrown as unhandled events.
 */
export function createRedis(url: string, options: { subscriber?: boolean; onError?: (err: Error) => void } = {}) {
  const client = new Redis(url, {
    // Fail commands at once while disconnected (clear errors); pub/sub keeps its queue to resubscribe.
    enableOfflineQueue: options.subscriber === true,
    maxRetriesPerRequest: options.subscriber ? null : 1,
    retryStrategy: (times) => Math.min(200 * times, 2000),
    lazyConnect: false,
  });
  let reported = false;
  client.on('error', (err: Error) => {
    if (!reported) options.onError?.(err);
    reported = true;
  });
  client.on('ready', () => {
    reported = false;
  });
  return client;
}

/** Redacts the password of a Redis URL for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'REDIS_URL';
  }
}

/** Wraps a Redis failure into the typed error clients see. */
export function unavailable(url: string, err: unknown): ServiceUnavailableError {
  const cause = err instanceof Error ? err.message : String(err);
  return new ServiceUnavailableError(`Redis at ${redactUrl(url)} is unreachable: ${cause}`);
}

/** How long one guarded operation may take before the request fails rather than hangs. */
const OPERATION_TIMEOUT_MS = 5000;

/** Runs a Redis operation, turning connection failures and stalls into {@link ServiceUnavailableError}. */
export async function guarded<T>(url: string, op: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${OPERATION_TIMEOUT_MS} ms`)), OPERATION_TIMEOUT_MS);
  });
  try {
    return await Promise.race([op(), timeout]);
  } catch (err) {
    if (err instanceof ServiceUnavailableError) throw err;
    throw unavailable(url, err);
  } finally {
    clearTimeout(timer);
  }
}
