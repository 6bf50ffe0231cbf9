/**
 * A scale-out worker whose engine process dies (issue 13): it stops taking jobs while the engine is down (its
 * BullMQ worker pauses, its advert says so, API nodes turn not-ready when no worker has an engine up), and takes
 * them again once the supervisor has restarted the engine. A private redis-server, real `fluxql serve --role …`
 * processes, the engine child found among the worker's children and SIGKILLed. Skipped without redis-server.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  disposeCluster,
  findRedisServer,
  type NodeProcess,
  startApi,
  startRedis,
  startWorker,
} from '../../tools/cluster.ts';
import { GenerateImageDocument, JobDocument } from '../helpers/gql/graphql.ts';
import { eventually, gqlData } from '../helpers/test-server.ts';

const redisBin = findRedisServer();
if (!redisBin) console.warn('[scale-out-engine.test] redis-server not found on PATH: skipping');

let redis: NodeProcess & { url: string };
let api: NodeProcess & { url: string };
let worker: NodeProcess & { id: string };
let imageDir: string;
let bull: Queue;

async function readyz(): Promise<{ status: number; body: { workers?: number; reason?: string } }> {
  const res = await fetch(`${api.url}/readyz`);
  return { status: res.status, body: (await res.json()) as { workers?: number; reason?: string } };
}

async function jobStatus(id: string): Promise<string> {
  const { job } = await gqlData(api.url, JobDocument, { id });
  return job.__typename === 'QueryJobSuccess' ? job.data.status : 'MISSING';
}

/** The worker's engine child process (its child running `engine-process/entry*`; tsx has a child of its own). */
function enginePidOf(pid: number): number {
  const out = spawnSync('pgrep', ['-P', String(pid), '-f', 'engine-process/entry'], { encoding: 'utf8' })
    .stdout.trim()
    .split('\n')
    .filter(Boolean);
  expect(out).toHaveLength(1);
  return Number(out[0]);
}

describe.skipIf(!redisBin)('a scale-out worker whose engine dies', () => {
  beforeAll(async () => {
    redis = await startRedis(redisBin as string);
    imageDir = await mkdtemp(join(tmpdir(), 'fluxql-scale-engine-'));
    const env = {
      REDIS_URL: redis.url,
      REDIS_PREFIX: 'fluxql-engine-test',
      IMAGE_DIR: imageDir,
      MODEL_BATCH: '1',
      THREADS: '1',
      WORKER_LOCK_MS: '2000',
      // Keeps the engine down long enough to see the worker refuse work.
      ENGINE_RESTART_MS: '3000',
    };
    bull = new Queue('fluxql-engine-test-jobs', { connection: { url: redis.url } });
    [api, worker] = await Promise.all([startApi(env), startWorker({ ...env, WORKER_ID: 'w1' })]);
    await eventually(async () => expect((await readyz()).status).toBe(200));
  });

  afterAll(async () => {
    await bull?.close();
    await disposeCluster();
    if (imageDir) await rm(imageDir, { recursive: true, force: true });
  });

  it('stops taking jobs while its engine is down and takes them again once it is back', async () => {
    const enginePid = enginePidOf(worker.proc.pid as number);
    process.kill(enginePid, 'SIGKILL');

    // Not ready: the only worker is alive but its engine is not.
    await eventually(async () => {
      const r = await readyz();
      expect(r.status).toBe(503);
      expect(r.body.reason).toMatch(/engine/);
    });
    const { generateImage: r } = await gqlData(api.url, GenerateImageDocument, {
      input: { prompt: 'a harbour at night', width: 64, height: 64, steps: 3, seed: 3 },
    });
    if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(JSON.stringify(r));
    const id = r.data.jobId;

    // A second later the job is still waiting in BullMQ: nobody took it.
    await new Promise((res) => setTimeout(res, 1000));
    expect(await bull.getJobState(id)).toBe('waiting');
    expect(await jobStatus(id)).toBe('QUEUED');
    expect(worker.output()).toMatch(/worker w1 stops taking jobs/);

    // The engine is restarted; the worker takes the job and runs it.
    await eventually(async () => expect(await jobStatus(id)).toBe('SUCCEEDED'));
    expect((await bull.getJob(id))?.processedBy).toBe('w1');
    expect(worker.output()).toMatch(/worker w1 takes jobs again/);
    expect(enginePidOf(worker.proc.pid as number)).not.toBe(enginePid);
    // Readiness follows the worker's next advert (one a second), so it may trail the job by up to a second.
    await eventually(async () => expect(await readyz()).toMatchObject({ status: 200, body: { workers: 1 } }));
  });
});
