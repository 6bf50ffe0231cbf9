/**
 * Limits at the edge, over real HTTP and WebSocket against the embedded model (port 0): GraphQL documents over the
 * depth, alias, token, cost and `generateImage` limits are refused with 400 and a typed code and queue nothing;
 * WebSocket messages over WS_MAX_PAYLOAD close the socket (1009); a wrong token on the upgrade is refused before
 * any frame; JOB_TIMEOUT_S fails a job with code `timeout` (GraphQL and REST).
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { disposeLeftovers, eventually, metricValue, startTestServer } from '../helpers/test-server.ts';

let url: string;
const TOKEN = 'edge-limits-token';
const auth = { authorization: `Bearer ${TOKEN}` };

beforeAll(async () => {
  ({ url } = await startTestServer({ authToken: TOKEN, modelBatch: 2, wsMaxPayload: 16 * 1024 }));
});
afterAll(disposeLeftovers);

async function post(query: string, headers: Record<string, string> = auth) {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
    body: JSON.stringify({ query }),
  });
  return {
    status: res.status,
    body: (await res.json()) as { data?: unknown; errors?: { message: string; extensions?: { code?: string } }[] },
  };
}

const GEN = 'generateImage(input: {prompt: "x", width: 64, height: 64, steps: 1}) { __typename }';

async function jobCount(): Promise<number> {
  const { body } = await post('{ jobs(first: 100) { edges { node { id } } } }');
  return (body.data as { jobs: { edges: unknown[] } }).jobs.edges.length;
}

describe('GraphQL document limits', () => {
  it('refuses 1000 aliased generateImage fields with 400 and queues nothing', async () => {
    const before = await jobCount();
    const query = `mutation { ${Array.from({ length: 1000 }, (_, i) => `a${i}: ${GEN}`).join(' ')} }`;
    const { status, body } = await post(query);
    expect(status).toBe(400);
    expect(body.errors?.[0]?.extensions?.code).toMatch(/^MAX_(TOKENS|ALIASES)$/);
    expect(await jobCount()).toBe(before);
  });

  it('refuses 16 aliases (over GRAPHQL_MAX_ALIASES) with MAX_ALIASES', async () => {
    const query = `{ ${Array.from({ length: 16 }, (_, i) => `m${i}: models { id }`).join(' ')} }`;
    const { status, body } = await post(query);
    expect(status).toBe(400);
    expect(body.errors?.[0]?.extensions?.code).toBe('MAX_ALIASES');
  });

  it('refuses 5 generateImage fields in one operation (MAX_GENERATIONS_PER_OPERATION 4) and queues none', async () => {
    const before = await jobCount();
    const query = `mutation { ${Array.from({ length: 5 }, (_, i) => `g${i}: ${GEN}`).join(' ')} }`;
    const { status, body } = await post(query);
    expect(status).toBe(400);
    expect(body.errors?.[0]?.extensions?.code).toBe('TOO_MANY_GENERATIONS');
    expect(await jobCount()).toBe(before);
  });

  it('refuses a 5000-deep document with 400 (not 500), quickly', async () => {
    const query = `${'{ a '.repeat(5000)}${'}'.repeat(5000)}`;
    const t0 = Date.now();
    const { status, body } = await post(query);
    expect(status).toBe(400);
    expect(body.errors?.[0]?.extensions?.code).toBe('MAX_TOKENS');
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('refuses a document deeper than GRAPHQL_MAX_DEPTH (12) that is short in tokens', async () => {
    expect((await post('{ jobs { edges { node { images { id } } } } }')).status).toBe(200);
    const tooDeep = `{ ${'a { '.repeat(13)}b${' }'.repeat(13)} }`;
    const r = await post(tooDeep);
    expect(r.status).toBe(400);
    expect(r.body.errors?.map((e) => e.extensions?.code)).toContain('MAX_DEPTH');
  });

  it('refuses 50k aliased `models` fields at parse time (tokens), without blocking the server', async () => {
    const query = `{ ${Array.from({ length: 50_000 }, (_, i) => `m${i}: models { id }`).join(' ')} }`;
    const health = (async () => {
      await new Promise((r) => setTimeout(r, 20));
      const t0 = Date.now();
      await fetch(`${url}/healthz`);
      return Date.now() - t0;
    })();
    const { status, body } = await post(query);
    expect(status).toBe(400);
    expect(body.errors?.[0]?.extensions?.code).toBe('MAX_TOKENS');
    expect(await health).toBeLessThan(2000);
  });

  it('applies the same limits over graphql-ws', async () => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/graphql`, 'graphql-transport-ws', { headers: auth });
    const messages: { type: string; id?: string; payload?: { extensions?: { code?: string } }[] }[] = [];
    ws.on('message', (m) => messages.push(JSON.parse(String(m))));
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ type: 'connection_init', payload: {} }));
    await eventually(() => expect(messages.some((m) => m.type === 'connection_ack')).toBe(true));
    const query = `mutation { ${Array.from({ length: 5 }, (_, i) => `g${i}: ${GEN}`).join(' ')} }`;
    ws.send(JSON.stringify({ type: 'subscribe', id: '1', payload: { query } }));
    const error = await eventually(() => {
      const m = messages.find((x) => x.type === 'error' && x.id === '1');
      if (!m) throw new Error('no error yet');
      return m;
    });
    expect(error.payload?.[0]?.extensions?.code).toBe('TOO_MANY_GENERATIONS');
    ws.close();
  });
});

describe('WebSocket edge', () => {
  it('refuses a wrong token on the upgrade with 401 before any frame', async () => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/graphql?token=wrong`, 'graphql-transport-ws');
    const status = await new Promise<number>((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(101));
      ws.on('error', () => {});
    });
    expect(status).toBe(401);
  });

  it('accepts the token as a query parameter on the upgrade', async () => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/graphql?token=${TOKEN}`, 'graphql-transport-ws');
    const messages: { type: string }[] = [];
    ws.on('message', (m) => messages.push(JSON.parse(String(m))));
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ type: 'connection_init' }));
    await eventually(() => expect(messages[0]?.type).toBe('connection_ack'));
    ws.close();
  });

  it('closes with 1009 on a message over WS_MAX_PAYLOAD, connection_init included', async () => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/graphql`, 'graphql-transport-ws');
    ws.on('error', () => {});
    await new Promise((r) => ws.once('open', r));
    const code = new Promise<number>((r) => ws.once('close', (c) => r(c)));
    ws.send(JSON.stringify({ type: 'connection_init', payload: { authorization: 'x'.repeat(64 * 1024) } }));
    expect(await code).toBe(1009);
  });

  it('closes with 4403 on a wrong token in connection_init', async () => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/graphql`, 'graphql-transport-ws');
    ws.on('error', () => {});
    await new Promise((r) => ws.once('open', r));
    const code = new Promise<number>((r) => ws.once('close', (c) => r(c)));
    ws.send(JSON.stringify({ type: 'connection_init', payload: { authorization: 'Bearer nope' } }));
    expect(await code).toBe(4403);
  });
});

describe('JOB_TIMEOUT_S', () => {
  it('fails a job past its deadline with code timeout (GraphQL) and 504 over REST', async () => {
    const { url: slow } = await startTestServer({ jobTimeoutSeconds: 0.05, modelBatch: 1 });
    const res = await fetch(`${slow}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        query: `mutation { generateImage(input: {prompt: "slow", width: 256, height: 256, steps: 50}) { ... on MutationGenerateImageSuccess { data { jobId } } } }`,
      }),
    });
    const { data } = (await res.json()) as { data: { generateImage: { data: { jobId: string } } } };
    const id = data.generateImage.data.jobId;
    const job = await eventually(async () => {
      const r = await fetch(`${slow}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          query: `{ job(id: "${id}") { ... on QueryJobSuccess { data { status error { code message } } } } }`,
        }),
      });
      const j = ((await r.json()) as { data: { job: { data: { status: string; error: { code: string } | null } } } })
        .data.job.data;
      if (j.status !== 'FAILED') throw new Error(j.status);
      return j;
    });
    expect(job.error?.code).toBe('timeout');
    const rest = await fetch(`${slow}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'slow', width: 256, height: 256, num_inference_steps: 50 }),
    });
    expect(rest.status).toBe(504);
    expect(((await rest.json()) as { error: { code: string } }).error.code).toBe('timeout');
    expect(await metricValue(slow, 'fluxql_errors_total')).toBeGreaterThanOrEqual(2);
  });
});

describe('HTTP timeouts', () => {
  it('closes a client that never finishes its headers, but lets a REST client wait for its image', async () => {
    const { url: timed } = await startTestServer({
      httpHeadersTimeoutSeconds: 1,
      httpRequestTimeoutSeconds: 1,
      modelBatch: 1,
    });
    const { port } = new URL(timed);
    const socket = connect(Number(port), '127.0.0.1');
    socket.write('POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n'); // and nothing more
    let reply = '';
    socket.on('data', (d) => {
      reply += String(d);
    });
    const t0 = Date.now();
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
    expect(reply).toMatch(/^HTTP\/1\.1 408/);
    expect(Date.now() - t0).toBeLessThan(10_000);
    // The request is complete at once; the reply (a job of a few seconds) is not cut by the 1 s timeout.
    const res = await fetch(`${timed}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'slow', width: 256, height: 256, num_inference_steps: 50 }),
    });
    expect(res.status).toBe(200);
  });
});
