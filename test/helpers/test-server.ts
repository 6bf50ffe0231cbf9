/**
 * @file Test harness (graphql-ws `tservers.ts` style): servers on port 0 whose disposal goes into `leftovers`,
 * drained by {@link disposeLeftovers} in `afterAll`; typed GraphQL over HTTP, SSE and graphql-ws.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { type ExecutionResult, print } from 'graphql';
import { type Client, createClient } from 'graphql-ws';
import { vi } from 'vitest';
import WebSocket from 'ws';
import { FLUX_TINY_DIR, loadConfig, type ServerConfig } from '../../src/config.ts';
import { type StartedServer, type StartServerDeps, startServer } from '../../src/main.ts';

const leftovers: (() => Promise<void>)[] = [];

/** Disposes every server and client created since the last call (newest first). */
export async function disposeLeftovers(): Promise<void> {
  for (const dispose of leftovers.splice(0).reverse()) await dispose();
}

/**
 * A server on 127.0.0.1 and a free port, with a fresh image directory; disposed by {@link disposeLeftovers}.
 * Only the default mode is warmed from the start (the others warm when a test asks for them), and it resolves once
 * `/readyz` says ready (the default mode is warm).
 */
export async function startTestServer(
  overrides: Partial<ServerConfig> = {},
  deps: StartServerDeps = {},
): Promise<StartedServer & { config: ServerConfig }> {
  const imageDir = await mkdtemp(join(tmpdir(), 'fluxql-images-'));
  const config = loadConfig(
    {},
    {
      modelRepo: FLUX_TINY_DIR,
      port: 0,
      host: '127.0.0.1',
      imageDir,
      maxQueueDelayMs: 20,
      warmModes: [],
      // Request and job log lines would bury the test report; FLUXQL_TEST_LOG_LEVEL=info shows them.
      logLevel: (process.env.FLUXQL_TEST_LOG_LEVEL as ServerConfig['logLevel'] | undefined) ?? 'silent',
      ...(process.env.FLUXQL_TEST_THREADS ? { threads: Number(process.env.FLUXQL_TEST_THREADS) } : {}),
      ...overrides,
    },
  );
  const server = await startServer(config, deps);
  leftovers.push(async () => {
    await server.stop();
    await rm(imageDir, { recursive: true, force: true });
  });
  await vi.waitFor(
    async () => {
      const res = await fetch(`${server.url}/readyz`);
      if (res.status !== 200) throw new Error(`not ready: ${await res.text()}`);
    },
    { timeout: 120_000, interval: 20 },
  );
  return { ...server, config };
}

/** Runs a typed operation over HTTP POST; returns the raw response too. */
export async function gql<TData, TVars>(
  url: string,
  doc: TypedDocumentNode<TData, TVars>,
  variables: TVars,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: ExecutionResult<TData> }> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
    body: JSON.stringify({ query: print(doc), variables }),
  });
  return { status: res.status, body: (await res.json()) as ExecutionResult<TData> };
}

/** Like {@link gql} but throws on GraphQL errors and returns `data`. */
export async function gqlData<TData, TVars>(
  url: string,
  doc: TypedDocumentNode<TData, TVars>,
  variables: TVars,
  headers: Record<string, string> = {},
): Promise<TData> {
  const { body } = await gql(url, doc, variables, headers);
  if (body.errors?.length || !body.data) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** A graphql-ws client (no retries, eager connection), disposed by {@link disposeLeftovers}. */
export function wsClient(url: string, connectionParams?: Record<string, unknown>): Client {
  const client = createClient({
    url: `${url.replace(/^http/, 'ws')}/graphql`,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    lazy: false,
    ...(connectionParams ? { connectionParams } : {}),
    onNonLazyError: () => {},
  });
  leftovers.push(async () => {
    await client.dispose();
  });
  return client;
}

/** Collects every `next` payload of a subscription over graphql-ws until it completes. */
export function collectWs<TData, TVars extends Record<string, unknown>>(
  client: Client,
  doc: TypedDocumentNode<TData, TVars>,
  variables: TVars,
): Promise<ExecutionResult<TData>[]> {
  return new Promise((resolve, reject) => {
    const out: ExecutionResult<TData>[] = [];
    client.subscribe<TData>(
      { query: print(doc), variables },
      {
        next: (v) => out.push(v as ExecutionResult<TData>),
        error: reject,
        complete: () => resolve(out),
      },
    );
  });
}

/**
 * Runs a subscription over GraphQL-over-SSE (yoga's distinct-connections mode) and collects `next` payloads until
 * `complete`. `signal` lets a test drop the connection early.
 */
export async function collectSse<TData, TVars>(
  url: string,
  doc: TypedDocumentNode<TData, TVars>,
  variables: TVars,
  options: {
    headers?: Record<string, string>;
    signal?: AbortSignal;
    onEvent?: (e: ExecutionResult<TData>) => void;
  } = {},
): Promise<ExecutionResult<TData>[]> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...options.headers },
    body: JSON.stringify({ query: print(doc), variables }),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  if (!res.ok || !res.body) throw new Error(`SSE request failed: ${res.status} ${await res.text()}`);
  const out: ExecutionResult<TData>[] = [];
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let sep = buffer.indexOf('\n\n');
    while (sep >= 0) {
      const block = buffer.slice(0, sep);
      buffer = buffer.slice(sep + 2);
      sep = buffer.indexOf('\n\n');
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (event === 'complete') return out;
      if (event === 'next' || (!event && data)) {
        const payload = JSON.parse(data) as ExecutionResult<TData>;
        out.push(payload);
        options.onEvent?.(payload);
      }
    }
  }
  return out;
}

/** Reads a Prometheus counter/gauge sum (all label sets) from `/metrics`. */
export async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

/** Retries `fn` until it stops throwing (event-driven waits without fixed sleeps); generous limit for slow CPUs. */
export function eventually<T>(fn: () => T | Promise<T>): Promise<T> {
  return vi.waitFor(fn, { timeout: 120_000, interval: 20 });
}
