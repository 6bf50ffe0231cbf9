/**
 * GraphQL over real HTTP, graphql-ws and SSE against the real pipeline (`createFluxExecutor`, models/flux-tiny),
 * server on port 0.
 */
import { print } from 'graphql';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CancelJobDocument,
  GenerateImageDocument,
  type GenerateImageInput,
  JobDocument,
  JobProgressDocument,
  type JobProgressSubscription,
  JobsDocument,
  ModelsDocument,
} from '../helpers/gql/graphql.ts';
import {
  collectSse,
  collectWs,
  disposeLeftovers,
  eventually,
  gqlData,
  metricValue,
  startTestServer,
  wsClient,
} from '../helpers/test-server.ts';

let url: string;

beforeAll(async () => {
  ({ url } = await startTestServer({ modelBatch: 4, maxQueueDelayMs: 50 }));
});
afterAll(disposeLeftovers);

const small = (seed: number, extra: Partial<GenerateImageInput> = {}): GenerateImageInput => ({
  prompt: 'a lighthouse on a cliff at dawn',
  seed,
  width: 64,
  height: 64,
  steps: 4,
  ...extra,
});

async function submit(input: GenerateImageInput) {
  const { generateImage: r } = await gqlData(url, GenerateImageDocument, { input });
  if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
  return r.data;
}

type Event = JobProgressSubscription['jobProgress'];

/** Checks the stream shape and returns the final image URL. */
function checkStream(events: Event[], totalSteps: number): string {
  expect(events[0]?.__typename).toBe('JobSnapshotEvent');
  const snapshotStep = events[0]?.__typename === 'JobSnapshotEvent' ? events[0].step : 0;
  const steps = events.flatMap((e) => (e.__typename === 'JobStepEvent' ? [e.step] : []));
  // Every step after the snapshot, once, in order.
  expect(steps).toEqual(Array.from({ length: totalSteps - snapshotStep }, (_, i) => snapshotStep + i + 1));
  for (const e of events) if (e.__typename === 'JobStepEvent') expect(e.totalSteps).toBe(totalSteps);
  const last = events.at(-1);
  if (last?.__typename !== 'JobSucceededEvent') throw new Error(`last event: ${JSON.stringify(last)}`);
  const url0 = last.images[0]?.url;
  if (!url0) throw new Error('no image url');
  return url0;
}

async function fetchImage(imageUrl: string) {
  const res = await fetch(imageUrl);
  expect(res.status).toBe(200);
  expect(res.headers.get('cache-control')).toContain('immutable');
  const bytes = Buffer.from(await res.arrayBuffer());
  return { res, bytes, meta: await sharp(bytes).metadata() };
}

describe('generateImage + jobProgress', () => {
  it('streams every step in order and a final URL over graphql-ws', async () => {
    // Connect first so the subscription starts before the job leaves the queue (the checks tolerate a late start).
    const client = wsClient(url);
    const job = await submit(small(1, { width: 96, height: 64, outputFormat: 'PNG', steps: 5 }));
    expect(job.status).toBe('QUEUED');
    const results = await collectWs(client, JobProgressDocument, { id: job.id });
    const events = results.map((r) => {
      expect(r.errors).toBeUndefined();
      return r.data?.jobProgress as Event;
    });
    const { res, meta } = await fetchImage(checkStream(events, 5));
    expect(res.headers.get('content-type')).toBe('image/png');
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 96, 64]);
  });

  it('streams the same over SSE', async () => {
    const job = await submit(small(2, { outputFormat: 'JPEG', height: 80 }));
    const results = await collectSse(url, JobProgressDocument, { id: job.jobId });
    const events = results.map((r) => r.data?.jobProgress as Event);
    const { res, meta } = await fetchImage(checkStream(events, 4));
    expect(res.headers.get('content-type')).toBe('image/jpeg');
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 64, 80]);
  });

  it('publishes preview URLs when asked', async () => {
    const client = wsClient(url);
    const job = await submit(small(3, { preview: true, steps: 12 }));
    const results = await collectWs(client, JobProgressDocument, { id: job.id });
    const previews = results.flatMap((r) =>
      r.data?.jobProgress.__typename === 'JobStepEvent' && r.data.jobProgress.previewUrl
        ? [r.data.jobProgress.previewUrl]
        : [],
    );
    expect(previews.length).toBeGreaterThan(0);
    const meta = await sharp(Buffer.from(await (await fetch(previews[0] as string)).arrayBuffer())).metadata();
    expect(meta.format).toBe('webp');
  });

  it('answers an unknown job id with a NotFoundError event', async () => {
    const results = await collectWs(wsClient(url), JobProgressDocument, { id: 'no-such-job' });
    expect(results.map((r) => r.data?.jobProgress.__typename)).toEqual(['NotFoundError']);
  });
});

describe('batching', () => {
  it('runs concurrent compatible requests in fewer engine batches, with the same pixels as solo runs', async () => {
    const seeds = [11, 12, 13, 14];
    const before = await metricValue(url, 'fluxql_batches_total');
    // One operation, four aliased mutations: all four are queued before the scheduler looks.
    const doc = `mutation { ${seeds
      .map(
        (s) =>
          `j${s}: generateImage(input: {prompt: "a red bicycle", seed: ${s}, width: 64, height: 64, steps: 3, outputFormat: PNG}) { ... on MutationGenerateImageSuccess { data { jobId } } }`,
      )
      .join(' ')} }`;
    const res = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: doc }),
    });
    const body = (await res.json()) as { data: Record<string, { data: { jobId: string } }> };
    const ids = seeds.map((s) => body.data[`j${s}`]?.data.jobId as string);
    const batched = await Promise.all(ids.map((id) => finalPixels(id)));
    expect((await metricValue(url, 'fluxql_batches_total')) - before).toBeLessThan(seeds.length);

    for (const [i, seed] of seeds.entries()) {
      const solo = await submit({
        prompt: 'a red bicycle',
        seed,
        width: 64,
        height: 64,
        steps: 3,
        outputFormat: 'PNG',
      });
      expect((await finalPixels(solo.jobId)).equals(batched[i] as Buffer)).toBe(true);
    }
  });
});

async function finalPixels(jobId: string): Promise<Buffer> {
  const results = await collectSse(url, JobProgressDocument, { id: jobId });
  const last = results.at(-1)?.data?.jobProgress;
  if (last?.__typename !== 'JobSucceededEvent') throw new Error(JSON.stringify(last));
  const bytes = Buffer.from(await (await fetch(last.images[0]?.url as string)).arrayBuffer());
  return sharp(bytes).raw().toBuffer();
}

describe('queries while generating', () => {
  it('answers `models` while a generation runs (the event loop is free)', async () => {
    const job = await submit(small(21, { steps: 100, width: 256, height: 256 }));
    await eventually(async () => {
      const { job: j } = await gqlData(url, JobDocument, { id: job.id });
      expect(j.__typename === 'QueryJobSuccess' && j.data.status).toBe('RUNNING');
    });
    const t0 = performance.now();
    const { models } = await gqlData(url, ModelsDocument, {});
    const ms = performance.now() - t0;
    const { job: after } = await gqlData(url, JobDocument, { id: job.id });
    // Ordering, not timing: the answer came back while the job was still running. (bench/load.ts reports ms.)
    expect(after.__typename === 'QueryJobSuccess' && after.data.status).toBe('RUNNING');
    console.info(`models query during generation: ${ms.toFixed(1)} ms`);
    expect(models[0]?.id).toBe('flux-1-dev-original-bs4');
    expect(models[0]?.specs.some((s) => s.origin === 'PUBLISHED' && s.hardware === 'H100')).toBe(true);
    await gqlData(url, CancelJobDocument, { id: job.id });
  });

  it('lists jobs as a relay connection and resolves images', async () => {
    const page = await gqlData(url, JobsDocument, { first: 2, status: ['SUCCEEDED'] });
    expect(page.jobs.edges).toHaveLength(2);
    expect(page.jobs.pageInfo.hasNextPage).toBe(true);
    for (const e of page.jobs.edges) expect(e.node.images.length).toBeGreaterThan(0);
    const next = await gqlData(url, JobsDocument, { first: 2, after: page.jobs.pageInfo.endCursor ?? null });
    expect(next.jobs.edges[0]?.cursor).not.toBe(page.jobs.edges[0]?.cursor);
  });

  it('cancels a job and reports it as data; unknown ids give NotFoundError', async () => {
    const job = await submit(small(31, { steps: 60, width: 256, height: 256 }));
    const events = collectSse(url, JobProgressDocument, { id: job.id });
    const { cancelJob } = await gqlData(url, CancelJobDocument, { id: job.id });
    expect(cancelJob.__typename).toBe('MutationCancelJobSuccess');
    const last = (await events).at(-1)?.data?.jobProgress;
    expect(last?.__typename).toBe('JobCanceledEvent');
    const missing = await gqlData(url, CancelJobDocument, { id: 'nope' });
    expect(missing.cancelJob.__typename).toBe('NotFoundError');
    const { job: j } = await gqlData(url, JobDocument, { id: 'nope' });
    expect(j.__typename).toBe('NotFoundError');
  });
});

describe('invalid input gives typed errors and the server keeps serving', () => {
  const cases: [string, Partial<GenerateImageInput>, string, string][] = [
    ['size not a multiple of 16', { width: 100 }, 'ValidationError', 'width'],
    ['zero steps', { steps: 0 }, 'ValidationError', 'steps'],
    ['500 steps', { steps: 500 }, 'ValidationError', 'steps'],
    ['empty prompt', { prompt: '   ' }, 'ValidationError', 'prompt'],
    ['100 kB prompt', { prompt: 'a'.repeat(100_000) }, 'ValidationError', 'prompt'],
    ['bad aspect ratio', { width: null, height: null, aspectRatio: '7:3' }, 'ValidationError', 'aspectRatio'],
    ['too many images', { numImages: 9 }, 'ValidationError', 'numImages'],
    ['unknown mode', { mode: 'XXL' }, 'UnknownModelError', ''],
    ['unknown model id (wrong batch size)', { model: 'flux-1-dev-original-bs8' }, 'UnknownModelError', ''],
  ];
  it.each(cases)('%s', async (_name, patch, typename, field) => {
    const { generateImage: r } = await gqlData(url, GenerateImageDocument, { input: { ...small(1), ...patch } });
    expect(r.__typename).toBe(typename);
    if (r.__typename === 'ValidationError') expect(r.field).toBe(field);
  });

  it('still serves afterwards, and rejects a malformed document with a GraphQL error', async () => {
    const res = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: `${print(ModelsDocument)} {` }),
    });
    expect(((await res.json()) as { errors?: { message: string }[] }).errors?.[0]?.message).toMatch(/Syntax Error/);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    const { models } = await gqlData(url, ModelsDocument, {});
    expect(models.length).toBeGreaterThan(0);
  });

  it('serves GraphiQL at /graphql', async () => {
    const res = await fetch(`${url}/graphql`, { headers: { accept: 'text/html' } });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('graphiql');
  });
});
