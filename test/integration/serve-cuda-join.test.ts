/**
 * Issue 16, through the real server: on `fluxql serve --engine cuda` a compatible request admitted while a job runs
 * lands in that job's engine batch (the executor's `join`), and `/metrics` shows it (`fluxql_engine_jobs_total`,
 * `fluxql_engine_joined_samples_total`); a request of another size gets an engine job of its own. A real server
 * process on the fake engine (test/helpers/fake-cuda-engine.mjs), driven over GraphQL.
 *
 * Deterministic without timing: the engine process is paused (SIGSTOP) before the first request, so that job is
 * admitted and waits in its engine `prepare`; the second request is queued meanwhile, and the engine resumed. The
 * scheduler then steps the first job once and admits the second at that step boundary (the running batch's key
 * matches: same mode, size and steps), so it joins the live engine job with steps left, whatever the engine's speed.
 * The fake engine's images are 10 * (sample id + 1) grey, so a joiner's PNG (sample 1 of the job) is 20 grey.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineChildren } from '../helpers/engine-processes.ts';
import { FAKE_CUDA_ENGINE } from '../helpers/fake-cuda-engine-log.ts';
import { GenerateImageDocument, type GenerateImageInput, JobDocument } from '../helpers/gql/graphql.ts';
import { REPO_ROOT } from '../helpers/paths.ts';
import { type ServeProcess, startServe } from '../helpers/serve-process.ts';
import { eventually, gqlData, metricValue } from '../helpers/test-server.ts';

const JOBS = 'fluxql_engine_jobs_total';
const JOINED = 'fluxql_engine_joined_samples_total';
let server: ServeProcess | undefined;
let dir: string | undefined;
let url: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fluxql-cuda-join-'));
  server = await startServe({
    args: ['--engine', 'cuda'],
    env: {
      MODEL_REPO: resolve(REPO_ROOT, 'models/flux-tiny'),
      CUDA_ENGINE_BIN: FAKE_CUDA_ENGINE,
      // f32: no fp8 plans, so no planner run at start (quick); the cache folder is not the repository's.
      CUDA_PRECISION: 'f32',
      CACHE_DIR: dir,
      IMAGE_DIR: dir,
      MODEL_BATCH: '4',
      // The first request is admitted at once (it need not wait for companions); joiners never wait.
      MAX_QUEUE_DELAY_MS: '0',
    },
  });
  url = server.url;
  await eventually(async () => expect((await fetch(`${url}/readyz`)).status).toBe(200));
}, 120_000);

afterAll(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const request = (seed: number, side = 64): GenerateImageInput => ({
  prompt: 'a red fox in fresh snow',
  seed,
  width: side,
  height: side,
  steps: 4,
  outputFormat: 'PNG',
});

async function submit(input: GenerateImageInput): Promise<string> {
  const r = await gqlData(url, GenerateImageDocument, { input });
  if (r.generateImage.__typename !== 'MutationGenerateImageSuccess') throw new Error(JSON.stringify(r));
  return r.generateImage.data.jobId;
}

async function job(id: string) {
  const r = await gqlData(url, JobDocument, { id });
  if (r.job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(r));
  return r.job.data;
}

/**
 * Submits `first` with the engine paused, waits until it is admitted (RUNNING: its engine `prepare` waits on the
 * paused engine), submits `second` (queued behind the running batch), resumes the engine and waits for both to
 * succeed; returns the two jobs.
 */
async function whileFirstRuns(first: GenerateImageInput, second: GenerateImageInput) {
  const engines = engineChildren(server!.proc.pid!, FAKE_CUDA_ENGINE);
  expect(engines).toHaveLength(1);
  const engine = engines[0]!;
  process.kill(engine, 'SIGSTOP');
  let ids: string[];
  try {
    const a = await submit(first);
    await eventually(async () => expect((await job(a)).status).toBe('RUNNING'));
    const b = await submit(second);
    expect((await job(b)).status).toBe('QUEUED');
    ids = [a, b];
  } finally {
    process.kill(engine, 'SIGCONT');
  }
  return Promise.all(
    ids.map((id) =>
      eventually(async () => {
        const j = await job(id);
        expect(j.status).toBe('SUCCEEDED');
        return j;
      }),
    ),
  );
}

/** The distinct RGB byte values of a job's PNG (the fake engine's images are flat grey). */
async function greys(imageUrl: string): Promise<number[]> {
  const res = await fetch(imageUrl);
  expect(res.status).toBe(200);
  const raw = await sharp(Buffer.from(await res.arrayBuffer()))
    .removeAlpha()
    .raw()
    .toBuffer();
  return [...new Set(raw)];
}

const counters = async () => ({ jobs: await metricValue(url, JOBS), joined: await metricValue(url, JOINED) });

describe('serve --engine cuda: a joiner lands in the running engine batch (fake engine process)', () => {
  it('a compatible request joins the live engine job: +1 engine job, +1 joined sample', {
    timeout: 120_000,
  }, async () => {
    const before = await counters();
    const [a, b] = await whileFirstRuns(request(1), request(2));
    expect(await counters()).toEqual({ jobs: before.jobs + 1, joined: before.joined + 1 });
    for (const j of [a!, b!]) expect(j.images.map((im) => [im.width, im.height, im.format])).toEqual([[64, 64, 'PNG']]);
    // Sample 0 and sample 1 of one engine job.
    expect(await greys(a!.images[0]!.url)).toEqual([10]);
    expect(await greys(b!.images[0]!.url)).toEqual([20]);
  });

  it('a request of another size does not join: it gets an engine job of its own', { timeout: 120_000 }, async () => {
    const before = await counters();
    const [a, c] = await whileFirstRuns(request(3), request(4, 80));
    expect(await counters()).toEqual({ jobs: before.jobs + 2, joined: before.joined });
    expect(c!.images.map((im) => [im.width, im.height])).toEqual([[80, 80]]);
    expect(await greys(a!.images[0]!.url)).toEqual([10]);
    expect(await greys(c!.images[0]!.url)).toEqual([10]);
  });
});
