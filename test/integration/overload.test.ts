/**
 * Bounded queue, cancellation and client disconnect, against the real pipeline with MODEL_BATCH=1 and
 * MAX_QUEUE_SIZE=1 (one job runs, one waits, the rest are refused).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelJobDocument, JobDocument, JobProgressDocument } from '../helpers/gql/graphql.ts';
import { collectSse, disposeLeftovers, eventually, gqlData, startTestServer } from '../helpers/test-server.ts';

let url: string;

beforeAll(async () => {
  ({ url } = await startTestServer({ modelBatch: 1, maxQueueSize: 1, maxQueueDelayMs: 0 }));
});
afterAll(disposeLeftovers);

// Long enough to keep the engine busy while the test queues, cancels and disconnects.
const LONG = 'prompt: "a long exposure of city traffic", width: 256, height: 256, steps: 100';

async function generate(fields: string): Promise<{ __typename: string; id?: string }> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      query: `mutation { generateImage(input: {${fields}}) { __typename ... on MutationGenerateImageSuccess { data { jobId } } } }`,
    }),
  });
  const body = (await res.json()) as { data: { generateImage: { __typename: string; data?: { jobId: string } } } };
  const r = body.data.generateImage;
  return { __typename: r.__typename, ...(r.data ? { id: r.data.jobId } : {}) };
}

async function status(id: string): Promise<string> {
  const { job } = await gqlData(url, JobDocument, { id });
  return job.__typename === 'QueryJobSuccess' ? job.data.status : 'MISSING';
}

async function cancelAll(ids: (string | undefined)[]) {
  for (const id of ids) if (id) await gqlData(url, CancelJobDocument, { id });
  for (const id of ids)
    if (id) await eventually(async () => expect(['CANCELED', 'SUCCEEDED']).toContain(await status(id)));
}

describe('bounded queue', () => {
  it('refuses with QueueFullError / 429 beyond the queue size, and a cancel frees the slot', async () => {
    // Four mutations in one operation: one may start, one may wait, the others must be refused.
    const res = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        query: `mutation { ${[1, 2, 3, 4]
          .map(
            (i) =>
              `g${i}: generateImage(input: {${LONG}, seed: ${i}}) { __typename ... on MutationGenerateImageSuccess { data { jobId } } ... on QueueFullError { retryAfterSeconds } }`,
          )
          .join(' ')} }`,
      }),
    });
    const body = (await res.json()) as { data: Record<string, { __typename: string; data?: { jobId: string } }> };
    const results = Object.values(body.data);
    expect(results.filter((r) => r.__typename === 'QueueFullError').length).toBeGreaterThanOrEqual(2);
    const accepted = results.flatMap((r) => (r.data ? [r.data.jobId] : []));

    // Now make sure one job runs and one waits, then REST must get 429 with Retry-After.
    const running = accepted[0] as string;
    await eventually(async () => expect(await status(running)).toBe('RUNNING'));
    let queued = accepted[1];
    if (!queued) queued = (await generate(`${LONG}, seed: 9`)).id;
    expect(await status(queued as string)).toBe('QUEUED');

    const rest = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'flux-1-dev-original-bs1', prompt: 'x', size: '64x64' }),
    });
    expect(rest.status).toBe(429);
    expect(rest.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(await rest.json()).toMatchObject({ error: { code: 'queue_full' } });

    // Cancelling the waiting job frees its slot at once.
    const { cancelJob } = await gqlData(url, CancelJobDocument, { id: queued as string });
    expect(cancelJob.__typename === 'MutationCancelJobSuccess' && cancelJob.data.status).toBe('CANCELED');
    const next = await generate(`${LONG}, seed: 10`);
    expect(next.__typename).toBe('MutationGenerateImageSuccess');
    await cancelAll([running, next.id]);
  });
});

describe('client disconnect', () => {
  it('removes a queued REST job when its client goes away, and frees the slot', async () => {
    const running = await generate(`${LONG}, seed: 20`);
    await eventually(async () => expect(await status(running.id as string)).toBe('RUNNING'));

    const abort = new AbortController();
    const pending = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', aspect_ratio: '1:1', num_inference_steps: 2 }),
      signal: abort.signal,
    }).catch((e: unknown) => e);
    // Find the REST job (the newest queued one) and watch it.
    const queuedId = await eventually(async () => {
      const res = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: '{ jobs(first: 1, status: [QUEUED]) { edges { node { jobId } } } }' }),
      });
      const body = (await res.json()) as { data: { jobs: { edges: { node: { jobId: string } }[] } } };
      const id = body.data.jobs.edges[0]?.node.jobId;
      expect(id).toBeDefined();
      return id as string;
    });
    const events = collectSse(url, JobProgressDocument, { id: queuedId });
    abort.abort();
    await pending;
    const last = (await events).at(-1)?.data?.jobProgress;
    expect(last?.__typename === 'JobCanceledEvent' && last.reason).toBe('client disconnected');

    const next = await generate(`${LONG}, seed: 21`);
    expect(next.__typename).toBe('MutationGenerateImageSuccess');
    await cancelAll([running.id, next.id]);
  });

  it('drops a running REST job at the next step boundary when its client goes away', async () => {
    const abort = new AbortController();
    const pending = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', width: 256, height: 256, num_inference_steps: 100 }),
      signal: abort.signal,
    }).catch((e: unknown) => e);
    const runningId = await eventually(async () => {
      const res = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: '{ jobs(first: 1, status: [RUNNING]) { edges { node { jobId step } } } }' }),
      });
      const body = (await res.json()) as { data: { jobs: { edges: { node: { jobId: string; step: number } }[] } } };
      const node = body.data.jobs.edges[0]?.node;
      expect(node?.step).toBeGreaterThan(0);
      return node?.jobId as string;
    });
    abort.abort();
    await pending;
    await eventually(async () => expect(await status(runningId)).toBe('CANCELED'));
    const { job } = await gqlData(url, JobDocument, { id: runningId });
    expect(job.__typename === 'QueryJobSuccess' && job.data.step).toBeLessThan(100);
  });
});
