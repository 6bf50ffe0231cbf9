/**
 * Scale-out acceptance (issue 7): a private redis-server, real `fluxql serve --role api|worker` processes on the
 * embedded flux-tiny model, real HTTP and graphql-ws clients. Skipped when redis-server is not installed.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { print } from 'graphql';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { makeBflControlLora } from '../../src/cli/conformance/lora-reference.ts';
import { writeSafetensors } from '../../src/shared/weights/index.ts';
import {
  disposeCluster,
  findRedisServer,
  type NodeProcess,
  startApi,
  startRedis,
  startServe,
  startWorker,
} from '../../tools/cluster.ts';
import {
  GenerateImageDocument,
  type GenerateImageInput,
  GenerateWithControlDocument,
  JobDocument,
  JobProgressDocument,
  type JobProgressSubscription,
  JobsDocument,
} from '../helpers/gql/graphql.ts';
import { TINY_CONFIG } from '../helpers/lora.ts';
import { REPO_ROOT } from '../helpers/paths.ts';
import { pattern } from '../helpers/pattern-image.ts';
import { collectWs, disposeLeftovers, eventually, gqlData, wsClient } from '../helpers/test-server.ts';

const redisBin = findRedisServer();
if (!redisBin) console.warn('[scale-out.test] redis-server not found on PATH: skipping the scale-out suite');

type Event = JobProgressSubscription['jobProgress'];

let redis: NodeProcess & { url: string };
let imageDir: string;
let loraDir: string;
let env: NodeJS.ProcessEnv;
let api: NodeProcess & { url: string };
const workers: (NodeProcess & { id: string })[] = [];
let bull: Queue;

const input = (seed: number, extra: Partial<GenerateImageInput> = {}): GenerateImageInput => ({
  prompt: 'a lighthouse on a cliff at dawn',
  seed,
  width: 64,
  height: 64,
  steps: 4,
  outputFormat: 'PNG',
  ...extra,
});

async function submit(url: string, i: GenerateImageInput): Promise<string> {
  const { generateImage: r } = await gqlData(url, GenerateImageDocument, { input: i });
  if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
  return r.data.jobId;
}

/** Every step after the snapshot arrives once and in order (restarting after a retry), then the image URL. */
function finalUrl(events: Event[], totalSteps: number): string {
  expect(events[0]?.__typename).toBe('JobSnapshotEvent');
  let expected = events[0]?.__typename === 'JobSnapshotEvent' ? events[0].step : 0;
  for (const e of events.slice(1)) {
    if (e.__typename === 'JobRetryEvent') expected = 0;
    if (e.__typename === 'JobStepEvent') {
      expect(e.step).toBe(expected + 1);
      expect(e.totalSteps).toBe(totalSteps);
      expected = e.step;
    }
  }
  expect(expected).toBe(totalSteps);
  const last = events.at(-1);
  if (last?.__typename !== 'JobSucceededEvent') throw new Error(`last event: ${JSON.stringify(last)}`);
  const url = last.images[0]?.url;
  if (!url) throw new Error('no image url');
  return url;
}

async function readyWorkers(url: string): Promise<number> {
  const body = (await (await fetch(`${url}/readyz`)).json()) as { workers?: number };
  return body.workers ?? 0;
}

describe.skipIf(!redisBin)('scale-out over Redis', () => {
  beforeAll(async () => {
    redis = await startRedis(redisBin as string);
    imageDir = await mkdtemp(join(tmpdir(), 'fluxql-scale-'));
    loraDir = await mkdtemp(join(tmpdir(), 'fluxql-scale-loras-'));
    await mkdir(loraDir, { recursive: true });
    writeSafetensors(
      join(loraDir, 'canny.safetensors'),
      makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 }),
    );
    env = {
      LORA_DIR: loraDir,
      REDIS_URL: redis.url,
      REDIS_PREFIX: 'fluxql-test',
      IMAGE_DIR: imageDir,
      MODEL_BATCH: '2',
      MAX_QUEUE_DELAY_MS: '10',
      THREADS: '1',
      // A killed worker's job comes back after about this long.
      WORKER_LOCK_MS: '2000',
    };
    bull = new Queue('fluxql-test-jobs', { connection: { url: redis.url } });
    const [a, w1, w2] = await Promise.all([
      startApi(env),
      startWorker({ ...env, WORKER_ID: 'w1' }),
      startWorker({ ...env, WORKER_ID: 'w2' }),
    ]);
    api = a;
    workers.push(w1, w2);
    await eventually(async () => expect(await readyWorkers(api.url)).toBe(2));
  });

  afterAll(async () => {
    await disposeLeftovers();
    await bull?.close();
    await disposeCluster();
    if (imageDir) await rm(imageDir, { recursive: true, force: true });
    if (loraDir) await rm(loraDir, { recursive: true, force: true });
  });

  it('runs 8 jobs on two workers; every subscriber gets every step and the final URL', async () => {
    const ids = await Promise.all(Array.from({ length: 8 }, (_, k) => submit(api.url, input(k + 1))));
    const streams = await Promise.all(ids.map((id) => collectWs(wsClient(api.url), JobProgressDocument, { id })));
    for (const events of streams) {
      const url = finalUrl(
        events.map((e) => e.data?.jobProgress as Event),
        4,
      );
      expect((await fetch(url)).status).toBe(200);
    }
    const takenBy = new Set(await Promise.all(ids.map(async (id) => (await bull.getJob(id))?.processedBy)));
    expect([...takenBy].sort()).toEqual(['w1', 'w2']);
  });

  it('delivers progress of a job submitted through node B to a subscriber on node A', async () => {
    const b = await startApi(env);
    await eventually(async () => expect(await readyWorkers(b.url)).toBe(2));
    const id = await submit(b.url, input(42, { width: 128, height: 128, steps: 60 }));
    const events = (await collectWs(wsClient(api.url), JobProgressDocument, { id })).map(
      (e) => e.data?.jobProgress as Event,
    );
    expect(events.some((e) => e.__typename === 'JobStepEvent')).toBe(true);
    expect((await fetch(finalUrl(events, 60).replace(api.url, b.url))).status).toBe(200);
    await b.kill();
  });

  it('answers job(id) for earlier jobs after the API node restarts', async () => {
    const id = await submit(api.url, input(7));
    await collectWs(wsClient(api.url), JobProgressDocument, { id });
    await disposeLeftovers(); // close the clients of the node going away
    await api.kill('SIGTERM');
    api = await startApi(env);
    await eventually(async () => expect(await readyWorkers(api.url)).toBe(2));
    const { job } = await gqlData(api.url, JobDocument, { id });
    if (job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(job));
    expect(job.data.status).toBe('SUCCEEDED');
    expect((await fetch(job.data.images[0]?.url ?? '')).status).toBe(200);
    const { jobs } = await gqlData(api.url, JobsDocument, { first: 100 });
    expect(jobs.edges.map((e) => e.node.jobId)).toContain(id);
  });

  it('carries a control image to the worker in its own Redis key, never in the record', async () => {
    const png = (phase: number) => {
      const data = Uint8Array.from({ length: 64 * 64 * 3 }, (_, i) =>
        Math.round(127.5 + 127.5 * Math.sin(0.3 * i + phase)),
      );
      return sharp(data, { raw: { width: 64, height: 64, channels: 3 } })
        .png()
        .toBuffer();
    };
    const [a, b] = await Promise.all([png(0), png(1.5)]);
    const canny = (image: Buffer | null) =>
      input(5, {
        loras: [{ name: 'canny', strength: 1 }],
        ...(image ? { controlImage: `data:image/png;base64,${image.toString('base64')}` } : {}),
      });
    // One at a time: LoRA engines are not bit-identical across batch sizes, so each job runs alone.
    const ids: string[] = [];
    const pixels: Buffer[] = [];
    for (const img of [a, a, b]) {
      const id = await submit(api.url, canny(img));
      const events = await collectWs(wsClient(api.url), JobProgressDocument, { id });
      const res = await fetch(
        finalUrl(
          events.map((e) => e.data?.jobProgress as Event),
          4,
        ),
      );
      ids.push(id);
      pixels.push(
        await sharp(Buffer.from(await res.arrayBuffer()))
          .raw()
          .toBuffer(),
      );
    }
    expect(pixels[1]?.equals(pixels[0]!)).toBe(true); // same image, whichever worker ran it
    expect(pixels[2]?.equals(pixels[0]!)).toBe(false);
    const redis = new Redis(env.REDIS_URL as string);
    onTestFinished(() => void redis.quit());
    const record = JSON.parse((await redis.get(`fluxql-test:job:${ids[0]}`)) ?? '{}') as Record<string, unknown>;
    expect([record.status, record.hasControlImage, 'controlImage' in record]).toEqual(['SUCCEEDED', true, false]);
    // Deleted once the job is done (by the worker, right after it publishes the end: it may trail the event).
    await eventually(async () => expect(await redis.exists(ids.map((id) => `fluxql-test:control:${id}`))).toBe(0));

    // The API node has no engine to ask whether a set needs an image: an image without any LoRA is refused there,
    // a control LoRA without an image fails the job in the worker (the engine's check).
    const { generateImage: unexpected } = await gqlData(api.url, GenerateWithControlDocument, {
      input: { ...canny(a), loras: [] },
    });
    expect(unexpected).toMatchObject({ __typename: 'ValidationError', field: 'controlImage', code: 'unexpected' });
    const missing = await submit(api.url, canny(null));
    const events = await collectWs(wsClient(api.url), JobProgressDocument, { id: missing });
    expect(events.at(-1)?.data?.jobProgress).toMatchObject({
      __typename: 'JobFailedEvent',
      message: expect.stringMatching(/needs a control image/),
    });
  });

  it('carries img2img and inpainting images to the worker: the same pixels as one process, keys gone after', async () => {
    // The same request served by one process (`fluxql serve`, no Redis) on the same model and settings.
    const single = await startServe({
      ...env,
      REDIS_URL: '',
      IMAGE_DIR: join(imageDir, 'single'),
      MODEL_REPO: join(REPO_ROOT, 'models/flux-tiny'),
      WARM_MODES: 'default',
    });
    const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;
    // White (repaint) in the middle, black (keep) around it.
    const mask = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#000' } })
      .composite([{ input: { create: { width: 32, height: 32, channels: 3, background: '#fff' } }, left: 16, top: 16 }])
      .png()
      .toBuffer();
    const image = dataUrl(await pattern(64, 64, 0));
    const cases: Record<string, GenerateImageInput> = {
      img2img: input(11, { image, strength: 0.75 }),
      inpaint: input(12, { image, mask: dataUrl(mask), strength: 1 }),
      text: input(11),
    };
    /** Runs a request to the end (one at a time: batch sizes are not bit-identical) → its id and RGB pixels. */
    const pixelsOf = async (url: string, i: GenerateImageInput) => {
      const id = await submit(url, i);
      const events = await collectWs(wsClient(url), JobProgressDocument, { id });
      const last = events.at(-1)?.data?.jobProgress as Event | undefined;
      if (last?.__typename !== 'JobSucceededEvent') throw new Error(`job ${id} ended with ${JSON.stringify(last)}`);
      const res = await fetch(last.images[0]?.url ?? '');
      return {
        id,
        rgb: await sharp(Buffer.from(await res.arrayBuffer()))
          .raw()
          .toBuffer(),
      };
    };
    const redis = new Redis(env.REDIS_URL as string);
    onTestFinished(() => void redis.quit());
    const scaled: Record<string, { id: string; rgb: Buffer }> = {};
    for (const [name, i] of Object.entries(cases)) {
      scaled[name] = await pixelsOf(api.url, i);
      if (name === 'text') continue;
      const local = await pixelsOf(single.url, i);
      expect([name, scaled[name].rgb.equals(local.rgb)]).toEqual([name, true]);
    }
    // The image was used: img2img differs from text-to-image with the same seed.
    expect(scaled.img2img?.rgb.equals(scaled.text?.rgb as Buffer)).toBe(false);
    const ids = [scaled.img2img?.id, scaled.inpaint?.id] as string[];
    const record = JSON.parse((await redis.get(`fluxql-test:job:${ids[1]}`)) ?? '{}') as Record<string, unknown>;
    expect([record.status, 'editImage' in record, 'editMask' in record]).toEqual(['SUCCEEDED', false, false]);
    expect(record.request).toMatchObject({ edit: 'inpaint', strength: 1 });
    // Deleted once the job is done (by the worker, right after it publishes the end: it may trail the event).
    const keys = ids.flatMap((id) => [`fluxql-test:edit-image:${id}`, `fluxql-test:edit-mask:${id}`]);
    await eventually(async () => expect(await redis.exists(keys)).toBe(0));
  });

  it('retries the job of a killed worker on the other one: nothing lost, nothing duplicated', async () => {
    await eventually(async () => expect(await readyWorkers(api.url)).toBe(2));
    const before = new Set((await gqlData(api.url, JobsDocument, { first: 1000 })).jobs.edges.map((e) => e.node.jobId));
    const long = await submit(api.url, input(99, { width: 128, height: 128, steps: 100 }));
    const seen: Event[] = [];
    const client = wsClient(api.url);
    const done = new Promise<void>((resolveDone, reject) => {
      client.subscribe(
        { query: print(JobProgressDocument), variables: { id: long } },
        {
          next: (v) => seen.push(v.data?.jobProgress as Event),
          error: reject,
          complete: () => resolveDone(),
        },
      );
    });
    // Kill whichever worker holds it, mid-job.
    await eventually(() => expect(seen.some((e) => e.__typename === 'JobStepEvent')).toBe(true));
    const holder = (await bull.getJob(long))?.processedBy;
    const victim = workers.find((w) => w.id === holder);
    if (!victim) throw new Error(`no worker named ${holder}`);
    const others = await Promise.all([1, 2].map((k) => submit(api.url, input(200 + k))));
    await victim.kill('SIGKILL');
    await done;

    expect(seen.some((e) => e.__typename === 'JobRetryEvent')).toBe(true);
    expect(seen.filter((e) => e.__typename === 'JobSucceededEvent')).toHaveLength(1);
    finalUrl(seen, 100);
    expect((await bull.getJob(long))?.processedBy).not.toBe(holder);

    for (const id of others) await collectWs(wsClient(api.url), JobProgressDocument, { id });
    const after = (await gqlData(api.url, JobsDocument, { first: 1000 })).jobs.edges
      .map((e) => e.node)
      .filter((n) => !before.has(n.jobId));
    expect(after.map((n) => n.jobId).sort()).toEqual([long, ...others].sort());
    expect(after.every((n) => n.status === 'SUCCEEDED' && n.images.length === 1)).toBe(true);
  });
});
