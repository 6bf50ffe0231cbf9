/**
 * Modes are planned, compiled and calibrated off the batch path, over a real server with the real engine and a fresh
 * engine cache: the first S request after startup waits for S to warm while an original batch keeps stepping, and a
 * later original request joins that batch at the next step instead of queueing behind S's compile.
 *
 * Everything travels over one graphql-ws socket (mutations included), so the events arrive in the order the server
 * published them: the assertions are on that order and on step numbers, not on wall-clock times.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { type ExecutionResult, print } from 'graphql';
import type { Client } from 'graphql-ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GenerateImageDocument, type GenerateImageInput, JobProgressDocument } from '../helpers/gql/graphql.ts';
import { disposeLeftovers, startTestServer, wsClient } from '../helpers/test-server.ts';

const cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-warmup-'));
let url: string;
let client: Client;

beforeAll(async () => {
  // Only the default mode (original) is warmed at startup: S is cold until its first request.
  ({ url } = await startTestServer({ cacheDir, warmModes: [], modelBatch: 4, threads: 1 }));
  client = wsClient(url);
});

afterAll(async () => {
  await disposeLeftovers();
  rmSync(cacheDir, { recursive: true, force: true });
});

/** One entry per event as it arrived on the socket: a job's event, or the moment a mutation answered. */
type Entry = { job: string; type: string; step?: number } | { marker: string };

/** Runs one operation over the socket and resolves with its single result. */
function once<TData, TVars extends Record<string, unknown>>(
  doc: TypedDocumentNode<TData, TVars>,
  variables: TVars,
): Promise<ExecutionResult<TData>> {
  return new Promise((resolve, reject) => {
    let result: ExecutionResult<TData> | undefined;
    client.subscribe<TData>(
      { query: print(doc), variables },
      { next: (r) => (result = r as ExecutionResult<TData>), error: reject, complete: () => resolve(result!) },
    );
  });
}

/** Submits a job (recording when the answer arrived), follows its events into `timeline`, resolves when it ends. */
async function submitAndFollow(name: string, input: GenerateImageInput, timeline: Entry[]) {
  const res = await once(GenerateImageDocument, { input });
  const r = res.data?.generateImage;
  if (r?.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit ${name}: ${JSON.stringify(res)}`);
  timeline.push({ marker: `${name} submitted` });
  const done = new Promise<void>((resolve, reject) => {
    client.subscribe(
      { query: print(JobProgressDocument), variables: { id: r.data.id } },
      {
        next: (e) => {
          const ev = (e.data as { jobProgress: { __typename: string; step?: number } }).jobProgress;
          timeline.push({ job: name, type: ev.__typename, ...(ev.step !== undefined ? { step: ev.step } : {}) });
        },
        error: reject,
        complete: resolve,
      },
    );
  });
  return { id: r.data.id, done };
}

const steps = (timeline: Entry[], job: string) =>
  timeline.flatMap((e, i) => ('job' in e && e.job === job && e.type === 'JobStepEvent' ? [{ i, step: e.step! }] : []));
const indexOf = (timeline: Entry[], marker: string) => timeline.findIndex((e) => 'marker' in e && e.marker === marker);

async function batchOf(id: string): Promise<string | null> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      query: 'query($id: ID!) { job(id: $id) { ... on QueryJobSuccess { data { status batchId } } } }',
      variables: { id },
    }),
  });
  const body = (await res.json()) as { data: { job: { data: { status: string; batchId: string | null } } } };
  expect(body.data.job.data.status).toBe('SUCCEEDED');
  return body.data.job.data.batchId;
}

describe('mode warm-up off the batch path', () => {
  it('serves a running original batch while the first S request waits for S to warm', async () => {
    const timeline: Entry[] = [];
    const original = { prompt: 'a red fox', width: 256, height: 256, steps: 40, seed: 1 };
    const a = await submitAndFollow('A', original, timeline);
    await expect.poll(() => steps(timeline, 'A').length, { timeout: 60_000, interval: 5 }).toBeGreaterThan(0);

    // The first S request after startup: S has no plan, engine or calibration in this cache yet.
    const b = await submitAndFollow(
      'B',
      { prompt: 'a boat', width: 64, height: 64, steps: 4, seed: 2, mode: 'S' },
      timeline,
    );
    const health = (await (await fetch(`${url}/readyz`)).json()) as { status: string; modes?: Record<string, string> };
    expect(health.status).toBe('ready'); // the default mode is warm; S may still be warming
    expect(health.modes?.original).toBe('ready');
    expect(health.modes?.S).toBeDefined();
    // An original request behind it, compatible with the running batch.
    const c = await submitAndFollow('C', { ...original, seed: 3 }, timeline);
    await Promise.all([a.done, b.done, c.done]);

    const aSteps = steps(timeline, 'A');
    const bSteps = steps(timeline, 'B');
    const cSteps = steps(timeline, 'C');
    expect(aSteps.map((s) => s.step)).toEqual(Array.from({ length: 40 }, (_, k) => k + 1));
    expect(bSteps.map((s) => s.step)).toEqual([1, 2, 3, 4]);
    expect(cSteps.length).toBeGreaterThan(0);
    expect(cSteps.at(-1)?.step).toBe(40);

    // C joined A's batch (S's warm-up did not hold it back) ...
    expect(await batchOf(c.id)).toBe(await batchOf(a.id));
    // ... within one step of its submission: while A runs, each C step s runs with A's step `offset + s`, published
    // just before it; A had taken `before` steps when C's submission was answered.
    const cSubmitted = indexOf(timeline, 'C submitted');
    const before = aSteps.filter((s) => s.i < cSubmitted).at(-1)?.step ?? 0;
    const aLast = aSteps.at(-1)!.i;
    const offsets = cSteps
      .filter((c) => c.i < aLast) // once A is done, C's last steps run alone
      .map((c) => (aSteps.filter((s) => s.i < c.i).at(-1)?.step ?? 0) - c.step);
    expect(offsets.length).toBeGreaterThan(0);
    expect(new Set(offsets).size).toBe(1);
    expect(offsets[0]).toBeLessThanOrEqual(before + 1);
    // S ran after the original batch, never inside it, and the original batch kept stepping meanwhile: every A
    // step after B's submission came before B's first step.
    expect(bSteps[0]!.i).toBeGreaterThan(aSteps.at(-1)!.i);
    expect(aSteps.filter((s) => s.i > indexOf(timeline, 'B submitted')).length).toBeGreaterThan(0);
    for (const job of ['A', 'B', 'C']) {
      expect(timeline.filter((e) => 'job' in e && e.job === job).at(-1)).toMatchObject({ type: 'JobSucceededEvent' });
    }
  });
});
