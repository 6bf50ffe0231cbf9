/**
 * Scoped access over real HTTP, SSE and WebSocket on the embedded model (port 0): API keys own their jobs (`job`,
 * `jobs`, `jobProgress`, `cancelJob`, `node`, image URLs), admin keys and AUTH_TOKEN see all; `/metrics` behind
 * METRICS_TOKEN; CORS allow-list with preflights answered without a key and never with credentials; REST refuses
 * non-JSON bodies (415); a malformed escape in an image name is a 400; a REST client that leaves while its control
 * image downloads gets no job.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'graphql';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { makeBflControlLora } from '../../src/cli/conformance/lora-reference.ts';
import { writeSafetensors } from '../../src/shared/weights/index.ts';
import { TINY_CONFIG } from '../helpers/lora.ts';
import { collectSse, disposeLeftovers, eventually, metricValue, startTestServer } from '../helpers/test-server.ts';

const KEYS = [
  { key: 'alice-key-0001', name: 'alice', admin: false },
  { key: 'bob-key-000002', name: 'bob', admin: false },
  { key: 'ops-key-000003', name: 'ops', admin: true },
];
const ROOT = 'root-auth-token';
const METRICS = 'metrics-token-1';
const ORIGIN = 'https://app.example';
const as = (key: string) => ({ authorization: `Bearer ${key}` });
const alice = as('alice-key-0001');
const bob = as('bob-key-000002');
const ops = as('ops-key-000003');
const root = as(ROOT);

let url: string;
let aliceJob: string;
let aliceImageUrl: string;

type Gql = {
  data?: Record<string, { __typename: string; data?: Record<string, unknown> } & Record<string, unknown>>;
  errors?: unknown[];
};

async function gql(query: string, headers: Record<string, string>, variables?: Record<string, unknown>): Promise<Gql> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ query, variables }),
  });
  return (await res.json()) as Gql;
}

const JOB = '{ __typename ... on QueryJobSuccess { data { jobId status images { url } } } }';

beforeAll(async () => {
  ({ url } = await startTestServer({
    apiKeys: KEYS,
    authToken: ROOT,
    metricsToken: METRICS,
    corsOrigins: [ORIGIN],
    modelBatch: 2,
  }));
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...alice },
    body: JSON.stringify({ prompt: 'alice', size: '64x64', num_inference_steps: 2, response_format: 'url' }),
  });
  expect(res.status).toBe(200);
  aliceJob = res.headers.get('x-job-id') ?? '';
  aliceImageUrl = ((await res.json()) as { data: { url: string }[] }).data[0]?.url ?? '';
});
afterAll(disposeLeftovers);

describe('jobs belong to the key that made them', () => {
  it('job(id): the owner and admins see it, another key gets NotFoundError', async () => {
    const q = `{ job(id: "${aliceJob}") ${JOB} }`;
    expect((await gql(q, alice)).data?.job?.__typename).toBe('QueryJobSuccess');
    expect((await gql(q, ops)).data?.job?.__typename).toBe('QueryJobSuccess');
    expect((await gql(q, root)).data?.job?.__typename).toBe('QueryJobSuccess');
    expect((await gql(q, bob)).data?.job?.__typename).toBe('NotFoundError');
  });

  it('jobs: each key lists its own; admins list all', async () => {
    const g = await gql(
      'mutation { generateImage(input: {prompt: "bob", width: 64, height: 64, steps: 1}) { __typename } }',
      bob,
    );
    expect(g.data?.generateImage?.__typename).toBe('MutationGenerateImageSuccess');
    const ids = async (h: Record<string, string>) => {
      const r = await gql('{ jobs(first: 50) { edges { node { jobId prompt } } } }', h);
      const edges = (r.data?.jobs as unknown as { edges: { node: { prompt: string } }[] } | undefined)?.edges ?? [];
      return edges.map((e) => e.node.prompt).sort();
    };
    expect(await ids(alice)).toEqual(['alice']);
    expect(await ids(bob)).toEqual(['bob']);
    expect(await ids(ops)).toEqual(['alice', 'bob']);
  });

  it('cancelJob and node(id) of another key: NotFoundError / null', async () => {
    const c = await gql(`mutation { cancelJob(id: "${aliceJob}") { __typename } }`, bob);
    expect(c.data?.cancelJob?.__typename).toBe('NotFoundError');
    const n = await gql(`{ node(id: "${Buffer.from(`ImageJob:${aliceJob}`).toString('base64')}") { id } }`, bob);
    expect(n.data?.node).toBeNull();
  });

  it('jobProgress over SSE and WebSocket: another key gets NotFoundError', async () => {
    const sub = `subscription { jobProgress(id: "${aliceJob}") { __typename } }`;
    const sse = await collectSse(url, parse(sub), {}, { headers: bob });
    expect(JSON.stringify(sse)).toContain('NotFoundError');
    const ws = new WebSocket(`${url.replace('http', 'ws')}/graphql`, 'graphql-transport-ws', { headers: bob });
    const got: { type: string; payload?: { data?: { jobProgress?: { __typename: string } } } }[] = [];
    ws.on('message', (m) => got.push(JSON.parse(String(m))));
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ type: 'connection_init' }));
    await eventually(() => expect(got[0]?.type).toBe('connection_ack'));
    ws.send(JSON.stringify({ type: 'subscribe', id: '1', payload: { query: sub } }));
    await eventually(() => expect(got.some((m) => m.type === 'complete' || m.type === 'error')).toBe(true));
    expect(got.find((m) => m.type === 'next')?.payload?.data?.jobProgress?.__typename).toBe('NotFoundError');
    ws.close();
  });

  it('image URLs: signed ones work without a header; unsigned only for the owner or an admin', async () => {
    expect(aliceImageUrl).toMatch(/\?sig=/);
    expect((await fetch(aliceImageUrl)).status).toBe(200);
    const plain = aliceImageUrl.replace(/\?sig=.*$/, '');
    expect((await fetch(plain)).status).toBe(404);
    expect((await fetch(plain, { headers: bob })).status).toBe(404);
    expect((await fetch(`${plain}?sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`)).status).toBe(404);
    expect((await fetch(plain, { headers: alice })).status).toBe(200);
    expect((await fetch(plain, { headers: ops })).status).toBe(200);
    // GraphQL hands out signed URLs too.
    const j = await gql(`{ job(id: "${aliceJob}") ${JOB} }`, alice);
    const gqlUrl = (j.data?.job?.data as { images: { url: string }[] } | undefined)?.images[0]?.url ?? '';
    expect((await fetch(gqlUrl)).status).toBe(200);
  });

  it('queue API: the request belongs to its key (status, result, cancel); admins see all', async () => {
    const submit = await fetch(`${url}/v1/queue/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...alice },
      body: JSON.stringify({ prompt: 'alice queued', size: '64x64', num_inference_steps: 2 }),
    });
    expect(submit.status).toBe(202);
    const { request_id: id, status_url: statusUrl } = (await submit.json()) as {
      request_id: string;
      status_url: string;
    };
    const status = (headers: Record<string, string>) => fetch(statusUrl, { headers }).then((r) => r.status);
    expect(await status(alice)).toBe(200);
    expect(await status(ops)).toBe(200);
    expect(await status(bob)).toBe(404);
    const result = `${url}/v1/queue/requests/${id}`;
    await eventually(async () => expect((await fetch(result, { headers: alice })).status).toBe(200));
    expect((await fetch(result, { headers: bob })).status).toBe(404);
    const cancelByBob = await fetch(`${result}/cancel`, { method: 'PUT', headers: bob });
    expect(cancelByBob.status).toBe(404);
    // The queue job is alice's in GraphQL too: she sees it, bob does not.
    const q = `{ job(id: "${id}") ${JOB} }`;
    expect((await gql(q, alice)).data?.job?.__typename).toBe('QueryJobSuccess');
    expect((await gql(q, bob)).data?.job?.__typename).toBe('NotFoundError');
  });

  it('refuses requests without a key or with an unknown one (401)', async () => {
    expect((await fetch(`${url}/v1/models`)).status).toBe(401);
    expect((await fetch(`${url}/v1/models`, { headers: as('nobody-key-0000') })).status).toBe(401);
    const r = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: '{ models { id } }' }),
    });
    expect(r.status).toBe(401);
  });
});

describe('metrics, CORS, content types, paths', () => {
  it('/metrics needs METRICS_TOKEN', async () => {
    expect((await fetch(`${url}/metrics`)).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: alice })).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: as(METRICS) })).status).toBe(200);
  });

  it('answers preflights without a key, only for allowed origins, never with credentials', async () => {
    const preflight = (origin: string) =>
      fetch(`${url}/graphql`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
      });
    const ok = await preflight(ORIGIN);
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    expect(ok.headers.get('access-control-allow-headers')).toContain('authorization');
    expect(ok.headers.get('access-control-allow-credentials')).toBeNull();
    const evil = await preflight('https://evil.example');
    expect(evil.status).toBe(204);
    expect(evil.headers.get('access-control-allow-origin')).toBeNull();
    const rest = await fetch(`${url}/v1/models`, { headers: { origin: 'https://evil.example', ...alice } });
    expect(rest.headers.get('access-control-allow-origin')).toBeNull();
    expect(rest.headers.get('access-control-allow-credentials')).toBeNull();
    const mine = await fetch(`${url}/v1/models`, { headers: { origin: ORIGIN, ...alice } });
    expect(mine.headers.get('access-control-allow-origin')).toBe(ORIGIN);
  });

  it('without CORS_ORIGINS any origin gets `*`, never echoed with credentials', async () => {
    const { url: open } = await startTestServer({ modelBatch: 1 });
    const r = await fetch(`${open}/graphql`, {
      method: 'OPTIONS',
      headers: { origin: 'https://x.example', 'access-control-request-method': 'POST' },
    });
    expect(r.status).toBe(204);
    expect(r.headers.get('access-control-allow-origin')).toBe('*');
    expect(r.headers.get('access-control-allow-credentials')).toBeNull();
  });

  it('REST needs Content-Type: application/json (415)', async () => {
    const body = JSON.stringify({ prompt: 'x', size: '64x64', num_inference_steps: 1 });
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', '']) {
      const r = await fetch(`${url}/v1/images/generations`, {
        method: 'POST',
        headers: { ...alice, ...(type ? { 'content-type': type } : {}) },
        body: type ? body : new Blob([body]),
      });
      expect(r.status).toBe(415);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('unsupported_media_type');
    }
  });

  it('a malformed escape in an image name is a 400, not a 500', async () => {
    const r = await fetch(`${url}/images/%E0%A4%A`, { headers: ops });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('invalid_path');
  });
});

describe('a REST client that leaves while its control image downloads', () => {
  let tmp: string;
  let stall: Server;
  let fetched: Promise<void>;
  let aborted: Promise<void>;
  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'fluxql-access-'));
    mkdirSync(join(tmp, 'loras'));
    writeSafetensors(
      join(tmp, 'loras', 'canny.safetensors'),
      makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 }),
    );
    let onFetch: () => void = () => {};
    let onAbort: () => void = () => {};
    fetched = new Promise((r) => (onFetch = r));
    aborted = new Promise((r) => (onAbort = r));
    // Sends the headers, then never the body: the download hangs until aborted.
    stall = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': '100000' });
      res.write(Buffer.alloc(10));
      onFetch();
      req.socket.once('close', onAbort);
    });
    await new Promise<void>((r) => stall.listen(0, '127.0.0.1', r));
  });
  afterAll(() => {
    stall.closeAllConnections();
    stall.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('gets no job, and the download is aborted', async () => {
    const { url: server } = await startTestServer({
      loraDir: join(tmp, 'loras'),
      controlImageAllowPrivateUrls: true,
      modelBatch: 1,
    });
    const client = new AbortController();
    const request = fetch(`${server}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt: 'x',
        width: 64,
        height: 64,
        num_inference_steps: 1,
        loras: [{ name: 'canny' }],
        control_image: `http://127.0.0.1:${(stall.address() as AddressInfo).port}/edges.png`,
      }),
      signal: client.signal,
    }).catch(() => undefined);
    await fetched;
    client.abort();
    await request;
    await aborted;
    // Give the server a moment to (wrongly) queue a job, then check it queued none.
    await new Promise((r) => setTimeout(r, 300));
    expect(await metricValue(server, 'fluxql_jobs_total')).toBe(0);
    const r = await fetch(`${server}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: '{ jobs { edges { node { id } } } }' }),
    });
    expect(((await r.json()) as { data: { jobs: { edges: unknown[] } } }).data.jobs.edges).toEqual([]);
  });
});
