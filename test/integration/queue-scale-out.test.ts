/**
 * The queue API in scale-out mode: real `fluxql serve --role api` (two nodes) and `--role worker` processes over a
 * private redis-server. A request queued on node A is polled and fetched on node B; its webhook is POSTed exactly
 * once (by node A, which accepted it), signed. The worker's JSON log lines name the job. Skipped without
 * redis-server.
 */
import { createHmac } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  disposeCluster,
  findRedisServer,
  type NodeProcess,
  startApi,
  startRedis,
  startWorker,
} from '../../tools/cluster.ts';
import { eventually } from '../helpers/test-server.ts';

const redisBin = findRedisServer();
const SECRET = 'scale-out-webhook-secret-42';

describe.skipIf(!redisBin)('queue API over Redis', () => {
  let imageDir: string;
  let a: NodeProcess & { url: string };
  let b: NodeProcess & { url: string };
  let worker: NodeProcess & { id: string };
  const hooks: { headers: IncomingHttpHeaders; raw: string }[] = [];
  const receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hooks.push({ headers: req.headers, raw: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(204).end();
    });
  });

  beforeAll(async () => {
    const redis = await startRedis(redisBin as string);
    imageDir = await mkdtemp(join(tmpdir(), 'fluxql-queue-scale-'));
    const env = {
      REDIS_URL: redis.url,
      REDIS_PREFIX: 'fluxql-queue-test',
      IMAGE_DIR: imageDir,
      THREADS: '1',
      MODEL_BATCH: '1',
      LOG_LEVEL: 'info',
      WEBHOOK_SECRET: SECRET,
      WEBHOOK_ALLOW_PRIVATE_URLS: '1',
    };
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    [a, b, worker] = await Promise.all([startApi(env), startApi(env), startWorker({ ...env, WORKER_ID: 'qw1' })]);
    await eventually(async () => {
      for (const node of [a, b]) expect((await fetch(`${node.url}/readyz`)).status).toBe(200);
    });
  });

  afterAll(async () => {
    await disposeCluster();
    await new Promise<void>((r) => receiver.close(() => r()));
    if (imageDir) await rm(imageDir, { recursive: true, force: true });
  });

  it('queues on node A, answers on node B, and sends one signed webhook', async () => {
    const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/done`;
    const res = await fetch(`${a.url}/v1/queue/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'a lighthouse', size: '64x64', num_inference_steps: 3, webhook_url: hookUrl }),
    });
    expect(res.status).toBe(202);
    const { request_id: id } = (await res.json()) as { request_id: string };

    await eventually(async () => {
      const s = (await (await fetch(`${b.url}/v1/queue/requests/${id}/status`)).json()) as { status: string };
      expect(s.status).toBe('COMPLETED');
    });
    const result = await fetch(`${b.url}/v1/queue/requests/${id}?response_format=url`);
    expect(result.status).toBe(200);
    const body = (await result.json()) as { data: { url: string }[] };
    expect((await fetch(body.data[0]?.url ?? '')).status).toBe(200);

    await eventually(() => expect(hooks).toHaveLength(1));
    const hook = hooks[0] as { headers: IncomingHttpHeaders; raw: string };
    expect(hook.headers['x-fluxql-signature']).toBe(
      `sha256=${createHmac('sha256', SECRET).update(hook.raw).digest('hex')}`,
    );
    expect(JSON.parse(hook.raw)).toMatchObject({ request_id: id, status: 'OK' });
    // Node B (which did not accept it) sends none, and node A sends no second one.
    await new Promise((r) => setTimeout(r, 1000));
    expect(hooks).toHaveLength(1);

    // The job's transitions: queued on the API node, started and succeeded on the worker.
    const events = (out: string) =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { jobId?: string; event?: string })
        .filter((l) => l.jobId === id && l.event)
        .map((l) => l.event);
    expect(events(a.output())).toEqual(['job.queued']);
    await eventually(() => expect(events(worker.output())).toEqual(['job.started', 'job.succeeded']));
  });
  it('stops an API node on SIGTERM while a request with a webhook has not ended', { timeout: 60_000 }, async () => {
    const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/late`;
    // Large and long enough to still run when node B stops.
    const res = await fetch(`${b.url}/v1/queue/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'slow', size: '1024x1024', num_inference_steps: 50, webhook_url: hookUrl }),
    });
    expect(res.status).toBe(202);
    const { status_url: statusUrl } = (await res.json()) as { status_url: string };
    expect(['IN_QUEUE', 'IN_PROGRESS']).toContain(
      ((await (await fetch(statusUrl)).json()) as { status: string }).status,
    );
    await b.kill('SIGTERM');
    expect(await b.exited).toBe(0);
  });
});
