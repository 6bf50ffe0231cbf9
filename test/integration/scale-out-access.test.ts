/**
 * Scoped access in scale-out mode: a private redis-server, a real `fluxql serve --role api` with API keys and a
 * worker. The job's owner travels in its Redis record (rewritten by the worker at every event), so the API node
 * scopes `job` and image URLs the same way after the worker has run it. Skipped without redis-server.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { disposeCluster, findRedisServer, startApi, startRedis, startWorker } from '../../tools/cluster.ts';

const redisBin = findRedisServer();
const KEYS = JSON.stringify({
  'alice-key-0001': 'alice',
  'bob-key-000002': 'bob',
  'ops-key-000003': { name: 'ops', role: 'admin' },
});
const as = (key: string) => ({ authorization: `Bearer ${key}` });
let imageDir: string;
let url: string;

describe.skipIf(!redisBin)('scale-out scoped access', () => {
  beforeAll(async () => {
    imageDir = await mkdtemp(join(tmpdir(), 'fluxql-so-access-'));
    const redis = await startRedis(redisBin as string);
    const env = { REDIS_URL: redis.url, IMAGE_DIR: imageDir, API_KEYS: KEYS, MODEL_BATCH: '2', AUTH_TOKEN: '' };
    ({ url } = await startApi(env));
    await startWorker(env);
    // The API node knows the worker once its advert arrives (every second).
    await vi.waitFor(async () => expect((await fetch(`${url}/readyz`)).status).toBe(200), { timeout: 60_000 });
  });
  afterAll(async () => {
    await disposeCluster();
    await rm(imageDir, { recursive: true, force: true });
  });

  it('keeps the owner through the worker: other keys cannot see the job or its image', async () => {
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...as('alice-key-0001') },
      body: JSON.stringify({ prompt: 'alice', size: '64x64', num_inference_steps: 2, response_format: 'url' }),
    });
    expect(res.status).toBe(200);
    const jobId = res.headers.get('x-job-id');
    const imageUrl = ((await res.json()) as { data: { url: string }[] }).data[0]?.url ?? '';
    const job = async (key: string) => {
      const r = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...as(key) },
        body: JSON.stringify({
          query: `{ job(id: "${jobId}") { __typename ... on QueryJobSuccess { data { status } } } }`,
        }),
      });
      return ((await r.json()) as { data: { job: { __typename: string; data?: { status: string } } } }).data.job;
    };
    expect(await job('alice-key-0001')).toEqual({ __typename: 'QueryJobSuccess', data: { status: 'SUCCEEDED' } });
    expect((await job('ops-key-000003')).__typename).toBe('QueryJobSuccess');
    expect((await job('bob-key-000002')).__typename).toBe('NotFoundError');
    expect((await fetch(imageUrl)).status).toBe(200);
    const plain = imageUrl.replace(/\?sig=.*$/, '');
    expect((await fetch(plain, { headers: as('bob-key-000002') })).status).toBe(404);
    expect((await fetch(plain, { headers: as('alice-key-0001') })).status).toBe(200);
  });
});
