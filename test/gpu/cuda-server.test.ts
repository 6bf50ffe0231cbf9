/**
 * The native CUDA engine behind the real server, on a GPU machine: `node bin/fluxql.js serve --engine cuda` on the
 * embedded flux-tiny model, a GraphQL `generateImage` with its graphql-ws `jobProgress` stream (every step event,
 * then PNG images of the requested size), the pixels against the ONNX Runtime pipeline for the same seeds
 * (f32 within 2/255, bf16 within 8/255), the `models` report (GPU name, benchmark rows), and engine death: a killed
 * engine fails what was in flight with a typed error and is restarted for later requests.
 *
 * Needs the built engine (CUDA_ENGINE_BIN, default engines/cuda/build/fluxql-engine) and an NVIDIA GPU; otherwise
 * every test here is skipped with a line saying why (CI). Precisions: FLUXQL_CUDA_PRECISIONS (default `f32,bf16`).
 * FLUXQL_GPU_REPORT, when set, is a file that receives one JSON line per checked precision (max pixel differences).
 * Run on the GPU machine: `engines/cuda/scripts/device-run.sh server`.
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type Client, createClient } from 'graphql-ws';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { CudaSampleLostError, type CudaStepExecutor, createCudaExecutor } from '../../src/pipeline/cuda-executor.ts';
import { FluxArgumentError } from '../../src/pipeline/flux/latents.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { loadFluxTokenizers } from '../../src/pipeline/flux/tokenize.ts';
import { LoraError } from '../../src/pipeline/lora/errors.ts';
import { CudaEngineClient, CudaEngineExitedError } from '../../src/runtime/cuda/index.ts';
import { MODEL_DIR, REPO_ROOT } from '../helpers/paths.ts';

const BIN = process.env.CUDA_ENGINE_BIN
  ? resolve(process.env.CUDA_ENGINE_BIN)
  : join(REPO_ROOT, 'engines/cuda/build/fluxql-engine');
const PRECISIONS = (process.env.FLUXQL_CUDA_PRECISIONS ?? 'f32,bf16').split(',').map((s) => s.trim()) as (
  | 'f32'
  | 'bf16'
)[];
const REPORT = process.env.FLUXQL_GPU_REPORT;

/** The first GPU's name from nvidia-smi, or undefined when there is none. */
function gpuName(): string | undefined {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' });
    return out.split('\n')[0]?.trim() || undefined;
  } catch {
    return undefined;
  }
}

const GPU = gpuName();
const SKIP = !existsSync(BIN)
  ? `no CUDA engine binary at ${BIN} (it is built on the GPU machine: engines/cuda/scripts/device-run.sh server)`
  : !GPU
    ? 'no NVIDIA GPU here (nvidia-smi lists none)'
    : undefined;
if (SKIP) console.log(`SKIP test/gpu/cuda-server.test.ts: ${SKIP}`);
const title = (what: string) => (SKIP ? `${what} [skipped: ${SKIP}]` : what);

const PROMPT = 'a red fox in fresh snow, golden hour';
const SEED = 1234;
const WIDTH = 96;
const HEIGHT = 64;
const STEPS = 4;

/** ONNX Runtime reference images for SEED and SEED + 1 (the server's images 0 and 1 of one job). */
let ortImages: Uint8Array[] | undefined;
async function ortReference(): Promise<Uint8Array[]> {
  if (!ortImages) {
    const cacheDir = await mkdtemp(join(tmpdir(), 'fluxql-ort-cache-'));
    const pipe = await FluxPipeline.fromPretrained(MODEL_DIR, { cacheDir });
    try {
      const r = await pipe.generate({
        prompts: [PROMPT, PROMPT],
        seed: [SEED, SEED + 1],
        width: WIDTH,
        height: HEIGHT,
        steps: STEPS,
      });
      ortImages = r.images.map((im) => im.data);
    } finally {
      await pipe.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  }
  return ortImages;
}

function maxAbsDiff(a: Uint8Array, b: Uint8Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Pids of the direct children of `pid` (from /proc, no tools needed). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // Fields after the parenthesised command: state, ppid, ...
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // the process ended while listing
    }
  }
  return out;
}

/** Polls `check` every 50 ms until it returns a value (the test's own timeout bounds the wait). */
async function waitFor<T>(check: () => T | undefined): Promise<T> {
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Server {
  url: string;
  proc: ChildProcessWithoutNullStreams;
  log: string[];
  stop(): Promise<void>;
}

/** Starts `node bin/fluxql.js serve --engine cuda` on a free port and waits for its URL. */
async function startServer(precision: string): Promise<Server> {
  const imageDir = await mkdtemp(join(tmpdir(), 'fluxql-cuda-images-'));
  const proc = spawn(process.execPath, [join(REPO_ROOT, 'bin/fluxql.js'), 'serve', '--engine', 'cuda'], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      IMAGE_DIR: imageDir,
      MODEL_REPO: MODEL_DIR,
      MODEL_BATCH: '4',
      // Jobs below the batch size wait this long for companions: time for the test to subscribe before the job
      // leaves the queue, so every step event is seen.
      MAX_QUEUE_DELAY_MS: '2000',
      CUDA_ENGINE_BIN: BIN,
      CUDA_PRECISION: precision,
    },
  });
  const log: string[] = [];
  const url = await new Promise<string>((resolveUrl, reject) => {
    const onLine = (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      log.push(text);
      const m = /serving .* at (http:\/\/\S+)/.exec(text);
      if (m) resolveUrl(m[1]!);
    };
    proc.stdout.on('data', onLine);
    proc.stderr.on('data', (c: Buffer) => log.push(c.toString('utf8')));
    proc.once('exit', (code) => reject(new Error(`server exited with code ${code}:\n${log.join('')}`)));
  });
  return {
    url,
    proc,
    log,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await exited;
      }
      await rm(imageDir, { recursive: true, force: true });
    },
  };
}

/** The fields the queries below select (every one optional: each event type has a subset). */
interface ProgressEvent {
  __typename: string;
  status?: string;
  step?: number;
  totalSteps?: number;
  images?: { url: string; width: number; height: number; format: string }[];
  code?: string;
  message?: string;
}
interface ModelsData {
  models: {
    id: string;
    device: string;
    specs: { origin: string; hardware: string; width: number; height: number; steps: number | null; source: string }[];
  }[];
}
interface GenerateData {
  generateImage: { __typename: string; data?: { jobId: string } };
}

async function gql<T>(url: string, query: string, variables: Record<string, unknown> = {}): Promise<T> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await res.json()) as { data?: unknown; errors?: unknown };
  if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data as T;
}

const MODELS = `query { models { id device specs { origin hardware width height steps latencySeconds source } } }`;
const GENERATE = `mutation($input: GenerateImageInput!) { generateImage(input: $input) { __typename
  ... on MutationGenerateImageSuccess { data { jobId totalSteps } }
  ... on ValidationError { field message } } }`;
const PROGRESS = `subscription($id: ID!) { jobProgress(id: $id) { __typename
  ... on JobSnapshotEvent { status step totalSteps }
  ... on JobStepEvent { step totalSteps }
  ... on JobSucceededEvent { images { url width height format } }
  ... on JobFailedEvent { code message } } }`;

/** Submits a job, follows its jobProgress stream to the end and returns the events. */
async function generate(url: string, client: Client, input: Record<string, unknown>): Promise<ProgressEvent[]> {
  const r = await gql<GenerateData>(url, GENERATE, { input });
  expect(r.generateImage.__typename).toBe('MutationGenerateImageSuccess');
  const jobId = r.generateImage.data!.jobId;
  return new Promise((resolveEvents, reject) => {
    const events: ProgressEvent[] = [];
    client.subscribe(
      { query: PROGRESS, variables: { id: jobId } },
      {
        next: (v) =>
          v.errors
            ? reject(new Error(JSON.stringify(v.errors)))
            : events.push((v.data as { jobProgress: ProgressEvent }).jobProgress),
        error: reject,
        complete: () => resolveEvents(events),
      },
    );
  });
}

async function fetchRgb(
  imageUrl: string,
): Promise<{ data: Uint8Array; width: number; height: number; format?: string }> {
  const res = await fetch(imageUrl);
  expect(res.status).toBe(200);
  const bytes = Buffer.from(await res.arrayBuffer());
  const meta = await sharp(bytes).metadata();
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  expect(info.channels).toBe(3);
  return { data: new Uint8Array(data), width: info.width, height: info.height, format: meta.format };
}

describe.skipIf(SKIP !== undefined)(title('CUDA engine client (real engine process)'), () => {
  it('reports the card before loading, and fails an in-flight call with CudaEngineExitedError when killed', async () => {
    const client = CudaEngineClient.start({ bin: BIN });
    try {
      const info = await client.info();
      expect(info.device).toBe(GPU);
      expect(info.loaded).toBe(false);
      expect(info.memoryTotalBytes).toBeGreaterThan(0);
      const loaded = await client.load(MODEL_DIR, 'f32');
      expect(loaded).toMatchObject({ device: GPU, precision: 'f32' });
      expect((await client.info()).loaded).toBe(true);
      const tok = await loadFluxTokenizers(MODEL_DIR);
      // 1000 steps, all in one `step` request: the engine is surely mid-request when the first progress arrives.
      const steps = 1000;
      const prepared = await client.prepare({
        batch: 1,
        height: 64,
        width: 64,
        clipIds: Int32Array.from(tok.encodeClip([PROMPT]), Number),
        t5Ids: Int32Array.from(tok.encodeT5([PROMPT], 64), Number),
        t5Len: 64,
        sigmas: Array.from({ length: steps + 1 }, (_, i) => 1 - i / steps),
        guidance: [3.5],
        seed: 7,
      });
      expect(prepared.steps).toBe(steps);
      const progress: number[] = [];
      const err = await client
        .step(prepared.job, undefined, (p) => {
          progress.push(p.step);
          if (progress.length === 1) client.kill('SIGKILL');
        })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CudaEngineExitedError);
      expect((err as CudaEngineExitedError).signal).toBe('SIGKILL');
      expect(progress[0]).toBe(1);
      expect(progress.length).toBeLessThan(steps);
      await expect(client.info()).rejects.toBe(err);
    } finally {
      client.kill('SIGKILL');
      await client.exited;
    }
  });
});

describe.skipIf(SKIP !== undefined)(title('CUDA executor (real engine process)'), () => {
  let ex: CudaStepExecutor;
  beforeAll(async () => {
    ex = await createCudaExecutor({ modelDir: MODEL_DIR, engineBin: BIN, precision: 'f32', maxBatch: 2 });
  });
  afterAll(async () => {
    await ex?.close();
  });

  const request = (seed: number) => ({
    prompt: PROMPT,
    height: HEIGHT,
    width: WIDTH,
    steps: STEPS,
    guidanceScale: 3.5,
    seed,
  });

  it('runs prepare / step (with previews) / decode and matches the ORT pipeline', async () => {
    expect(ex.info()).toMatchObject({ name: 'flux-tiny', modes: ['original'], device: `cuda: ${GPU} (f32)` });
    const handles = await ex.prepare([request(SEED), request(SEED + 1)]);
    for (let s = 1; s <= STEPS; s++) {
      const r = await ex.step(handles, { preview: s === 2 });
      expect(r.map((x) => [x.step, x.totalSteps])).toEqual([
        [s, STEPS],
        [s, STEPS],
      ]);
      if (s === 2) expect(r[0]!.preview).toMatchObject({ width: WIDTH / 8, height: HEIGHT / 8 });
    }
    const images = await ex.decode(handles);
    const ort = await ortReference();
    images.forEach((im, i) => {
      expect([im.width, im.height]).toEqual([WIDTH, HEIGHT]);
      expect(maxAbsDiff(im.data, ort[i]!)).toBeLessThanOrEqual(2);
    });
    await ex.release(handles);
  });

  it('refuses what the engine cannot run with typed errors', async () => {
    await expect(ex.prepare([{ ...request(1), mode: 'S' }])).rejects.toBeInstanceOf(FluxArgumentError);
    await expect(
      ex.prepare([{ ...request(1), loras: [{ name: 'x.safetensors', strength: 1 }] }]),
    ).rejects.toMatchObject({
      name: 'LoraError',
      code: 'unsupported',
    });
    await expect(ex.loadLora('x.safetensors', 1)).rejects.toBeInstanceOf(LoraError);
    expect(await ex.activeLoras()).toEqual([]);
    await expect(ex.prepare([{ ...request(1), width: 100 }])).rejects.toMatchObject({ param: 'width' });
  });

  it('loses the samples of a killed engine with a typed error and restarts it for later calls', async () => {
    const [h] = await ex.prepare([request(5)]);
    await ex.step([h!]);
    const before = (await ex.stats()).engineStarts ?? 0;
    const pid = ex.enginePid()!;
    process.kill(pid, 'SIGKILL');
    // The executor notices the exit and starts a new engine at once.
    const next = await waitFor(() => {
      const p = ex.enginePid();
      return p !== undefined && p !== pid ? p : undefined;
    });
    expect(next).not.toBe(pid);
    await expect(ex.step([h!])).rejects.toBeInstanceOf(CudaSampleLostError);
    await ex.release([h!]);
    const [h2] = await ex.prepare([request(SEED)]);
    for (let s = 0; s < STEPS; s++) await ex.step([h2!]);
    const [img] = await ex.decode([h2!]);
    expect(maxAbsDiff(img!.data, (await ortReference())[0]!)).toBeLessThanOrEqual(2);
    await ex.release([h2!]);
    const stats = await ex.stats();
    expect(stats.engineStarts).toBe(before + 1);
    expect(stats.engineExits).toBe(1);
  });
});

for (const precision of PRECISIONS) {
  describe.skipIf(SKIP !== undefined)(title(`fluxql serve --engine cuda (${precision})`), () => {
    let server: Server;
    let client: Client;
    beforeAll(async () => {
      server = await startServer(precision);
      client = createClient({
        url: `${server.url.replace(/^http/, 'ws')}/graphql`,
        webSocketImpl: WebSocket,
        lazy: false,
        retryAttempts: 0,
      });
    });
    afterAll(async () => {
      await client?.dispose();
      await server?.stop();
    });

    it('reports the GPU and the engine benchmark in models', async () => {
      const { models } = await gql<ModelsData>(server.url, MODELS);
      expect(models.map((m) => m.id)).toEqual(['flux-1-dev-original-bs4']);
      expect(models[0]!.device).toBe(`cuda: ${GPU} (${precision})`);
      const bench = models[0]!.specs.filter((s) => s.origin === 'MEASURED' && /cuda-h100\.json/.test(s.source));
      if (precision === 'bf16') {
        expect(bench.length).toBeGreaterThan(0);
        for (const s of bench) {
          expect(s).toMatchObject({ hardware: 'NVIDIA H100 80GB HBM3', width: 1024, height: 1024, steps: 28 });
        }
      } else {
        expect(bench).toEqual([]); // no f32 benchmark exists; no other precision's numbers are shown
      }
    });

    it('streams every step over graphql-ws and returns images matching the ORT pipeline', async () => {
      const events = await generate(server.url, client, {
        prompt: PROMPT,
        seed: SEED,
        width: WIDTH,
        height: HEIGHT,
        steps: STEPS,
        numImages: 2,
        outputFormat: 'PNG',
      });
      expect(events[0]).toMatchObject({ __typename: 'JobSnapshotEvent', step: 0, totalSteps: STEPS });
      const steps = events.filter((e) => e.__typename === 'JobStepEvent');
      expect(steps.map((e) => e.step)).toEqual([1, 2, 3, 4]);
      for (const e of steps) expect(e.totalSteps).toBe(STEPS);
      const last = events.at(-1);
      expect(last?.__typename, JSON.stringify(last)).toBe('JobSucceededEvent');
      expect(last?.images).toHaveLength(2);
      const ort = await ortReference();
      const diffs: number[] = [];
      for (const [k, image] of (last?.images ?? []).entries()) {
        expect(image).toMatchObject({ width: WIDTH, height: HEIGHT, format: 'PNG' });
        const rgb = await fetchRgb(image.url);
        expect([rgb.format, rgb.width, rgb.height]).toEqual(['png', WIDTH, HEIGHT]);
        diffs.push(maxAbsDiff(rgb.data, ort[k]!));
      }
      if (REPORT) {
        appendFileSync(
          REPORT,
          `${JSON.stringify({ test: 'server vs ORT', gpu: GPU, precision, size: `${WIDTH}x${HEIGHT}`, steps: STEPS, seeds: [SEED, SEED + 1], max_abs_of_255: diffs })}\n`,
        );
      }
      for (const d of diffs) expect(d).toBeLessThanOrEqual(precision === 'f32' ? 2 : 8);
    });

    it('restarts a killed engine: the next request succeeds', async () => {
      const engines = childrenOf(server.proc.pid!);
      expect(engines).toHaveLength(1);
      process.kill(engines[0]!, 'SIGKILL');
      await waitFor(() => {
        const now = childrenOf(server.proc.pid!);
        return now.length === 1 && now[0] !== engines[0] ? now[0] : undefined;
      });
      const events = await generate(server.url, client, {
        prompt: PROMPT,
        seed: 9,
        width: 64,
        height: 64,
        steps: 2,
        outputFormat: 'PNG',
      });
      const last = events.at(-1);
      expect(last?.__typename, JSON.stringify(last)).toBe('JobSucceededEvent');
      expect(events.filter((e) => e.__typename === 'JobStepEvent').map((e) => e.step)).toEqual([1, 2]);
      expect(server.log.join('')).toMatch(/CUDA engine pid \d+ ended: .*killed by SIGKILL/);
    });
  });
}
