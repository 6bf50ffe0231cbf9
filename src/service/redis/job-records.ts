/**
 * @file Job records in Redis: one JSON string per job (expiring after the history TTL) and a sorted set of ids
 * by creation time for `jobs`. Any API node reads them, so a restarted node loses nothing.
 */
import type { ChainableCommander, Redis } from 'ioredis';
import type { Job, JobStatus } from '../jobs.ts';
import type { JobRepository } from '../ports.ts';
import { decodeJob, encodeJob } from './codec.ts';
import { guarded, type RedisKeys } from './connection.ts';

/** How many jobs `list` returns at most (newest first). */
const LIST_LIMIT = 1000;

/** See the file comment. */
export class RedisJobRecords implements JobRepository {
  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
    private readonly url: string,
    /** Seconds a record lives after its last write (JOB_HISTORY_S). */
    private readonly ttlSeconds: number,
  ) {}

  /** Queues the writes of a record on a pipeline (so a worker can publish the matching event in the same trip). */
  write(p: ChainableCommander, job: Job): ChainableCommander {
    const created = job.createdAt.getTime();
    return p
      .set(this.keys.job(job.id), encodeJob(job), 'EX', this.ttlSeconds)
      .zadd(this.keys.index, created, job.id)
      .zremrangebyscore(this.keys.index, '-inf', Date.now() - this.ttlSeconds * 1000);
  }

  /** Writes a record. @throws ServiceUnavailableError */
  async save(job: Job): Promise<void> {
    await guarded(this.url, () => this.write(this.client.pipeline(), job).exec());
  }

  /** @throws ServiceUnavailableError */
  async get(id: string): Promise<Job | undefined> {
    const text = await guarded(this.url, () => this.client.get(this.keys.job(id)));
    return text ? decodeJob(text) : undefined;
  }

  /** @throws ServiceUnavailableError */
  async list(statuses?: readonly JobStatus[]): Promise<Job[]> {
    const ids = await guarded(this.url, () => this.client.zrevrange(this.keys.index, 0, LIST_LIMIT - 1));
    if (ids.length === 0) return [];
    const texts = await guarded(this.url, () => this.client.mget(ids.map((id) => this.keys.job(id))));
    const jobs = texts.flatMap((t) => (t ? [decodeJob(t)] : []));
    return statuses && statuses.length > 0 ? jobs.filter((j) => statuses.includes(j.status)) : jobs;
  }
}
