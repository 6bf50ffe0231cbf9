/**
 * Graceful drain of a real `fluxql serve` process on the embedded model: SIGTERM during a job lets that job and
 * the one queued behind it finish (the REST client gets its image, the SSE subscriber its succeeded event), while
 * new requests get 503 with Retry-After (REST), `ServiceUnavailableError` (GraphQL) and readiness turns false; then
 * the process exits 0. With a grace period of 0 the running job is cancelled with a reason naming
 * SHUTDOWN_GRACE_S.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'graphql';
import { afterAll, describe, expect, it } from 'vitest';
import { disposeCluster, startServe } from '../../tools/cluster.ts';
import { collectSse, eventually } from '../helpers/test-server.ts';

const tmp = mkdtempSync(join(tmpdir(), 'fluxql-drain-'));
afterAll(async () => {
  await disposeCluster();
  rmSync(tmp, { recursive: true, force: true });
});

const env = (grace: number) => ({
  IMAGE_DIR: join(tmp, `images-${grace}`),
  MODEL_BATCH: '1',
  SHUTDOWN_GRACE_S: String(grace),
  AUTH_TOKEN: '',
  API_KEYS: '',
});

/** A job that takes a few seconds on the embedded model. */
const SLOW = { prompt: 'a slow fox', width: 256, height: 256, num_inference_steps: 40 };

async function gql(url: string, query: string) {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query }),
  });
  return (await res.json()) as { data: Record<string, { __typename: string; data?: Record<string, unknown> }> };
}

async function submitGql(url: string): Promise<string> {
  const r = await gql(
    url,
    'mutation { generateImage(input: {prompt: "queued fox", width: 256, height: 256, steps: 40}) { __typename ... on MutationGenerateImageSuccess { data { jobId } } } }',
  );
  return String(r.data.generateImage?.data?.jobId);
}

async function runningJobs(url: string): Promise<number> {
  const r = await gql(url, '{ jobs(status: [RUNNING]) { edges { node { id } } } }');
  return (r.data.jobs as unknown as { edges: unknown[] }).edges.length;
}

describe('SIGTERM', () => {
  it('finishes the running and the queued job, refuses new work with 503, then exits 0', async () => {
    const server = await startServe(env(60));
    const { url } = server;
    const rest = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(SLOW),
    });
    await eventually(async () => expect(await runningJobs(url)).toBe(1));
    const queued = await submitGql(url);
    const events = collectSse(url, parse('subscription ($id: ID!) { jobProgress(id: $id) { __typename } }'), {
      id: queued,
    });
    server.proc.kill('SIGTERM');

    // Readiness turns false as soon as the drain starts; only then send new work (earlier work is accepted).
    await eventually(async () => expect((await fetch(`${url}/readyz`)).status).toBe(503));
    const refused = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(SLOW),
    });
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('5');
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('unavailable');
    const g = await gql(
      url,
      'mutation { generateImage(input: {prompt: "late"}) { __typename ... on Error { code } } }',
    );
    expect(g.data.generateImage).toEqual({ __typename: 'ServiceUnavailableError', code: 'unavailable' });

    const image = await rest;
    expect(image.status).toBe(200);
    expect(image.headers.get('content-type')).toBe('image/webp');
    expect((await image.arrayBuffer()).byteLength).toBeGreaterThan(100);
    const names = (await events).map((e) => (e.data as { jobProgress: { __typename: string } }).jobProgress.__typename);
    expect(names.at(-1)).toBe('JobSucceededEvent');
    expect(await server.exited).toBe(0);
    expect(server.output()).toMatch(/drained: 2 jobs finished, 0 cancelled/);
  });

  it('cancels what is left when SHUTDOWN_GRACE_S runs out, with a reason saying so', async () => {
    const server = await startServe(env(0));
    const { url } = server;
    const rest = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(SLOW),
    });
    await eventually(async () => expect(await runningJobs(url)).toBe(1));
    server.proc.kill('SIGTERM');
    const res = await rest;
    expect(res.status).toBe(409);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('canceled');
    expect(body.error.message).toMatch(/SHUTDOWN_GRACE_S/);
    expect(await server.exited).toBe(0);
    expect(server.output()).toMatch(/drained: 0 jobs finished, 1 cancelled/);
  });
});
