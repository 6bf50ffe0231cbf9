/**
 * @file The GPU checks of the native CUDA engine, written once with `node:assert` and registered by two runners:
 * `cuda-server.test.ts` (vitest: CI, where they skip with a line saying why) and `run-node.ts` (`node:test`, for
 * the GPU machine, whose carried node_modules has no room for vitest).
 *
 * What they check, on the embedded flux-tiny model:
 * - the engine client: the card is reported before loading; a killed engine fails the call in flight with
 *   `CudaEngineExitedError`;
 * - the executor: prepare / step (previews) / decode against the ONNX Runtime pipeline's pixels for the same seeds;
 *   typed refusals (modes, LoRAs, sizes); a killed engine loses its samples with `CudaSampleLostError` and is
 *   restarted, and the next generation matches ORT again;
 * - BFL single files (`flux1-dev.safetensors` + `ae.safetensors`) loaded through the executor's load spec give the
 *   ORT (diffusers-folder) pixels;
 * - the per-layer planner (issue 15): a bf16 executor with a cache folder calibrates flux-tiny on its first start,
 *   stores the plans manifest, serves L and M jobs (images near `original`'s), and a second executor reads the
 *   manifest instead of calibrating;
 * - the real server, `node bin/fluxql.js serve --engine cuda` per precision (FLUXQL_CUDA_PRECISIONS, default
 *   `f32,bf16`): `models` (GPU name, benchmark rows), a GraphQL `generateImage` followed over graphql-ws
 *   `jobProgress` (every step event, then two PNGs of the requested size, within 2/255 of ORT for f32 and 12/255 for
 *   bf16), a request admitted at a step boundary of a running job joining its engine batch (the engine pauses
 *   while it is queued; `/metrics` `fluxql_engine_joined_samples_total` +1, no new engine job; both PNGs against ORT)
 *   while another size gets an engine job of its own, and a request after killing the engine;
 * - in `cuda-lora-edit-checks.ts`, the same server per precision with a LORA_DIR (issues 16, 18): two fixture LoRAs
 *   loaded, switched and unloaded on one engine process (same pid, one load line; no LoRA after unloading is the base
 *   image bit for bit), a BFL Control LoRA with a `controlImage`, img2img, inpainting, true CFG and a LoRA with img2img
 *   over GraphQL, inpainting over `POST /v1/images/edits`, LoRA + img2img in modes XL, L, M, S, all against ORT's
 *   images for the same requests (original and XL within the tolerances above; L, M, S reported only).
 *
 * ORT's images come from FLUXQL_ORT_REFERENCE when set (one JSON with every case, `write-ort-reference.ts`), else
 * ONNX Runtime computes them here.
 * Needs the built engine (CUDA_ENGINE_BIN, default engines/cuda/build/fluxql-engine) and an NVIDIA GPU: otherwise
 * {@link SKIP} says why. FLUXQL_GPU_REPORT, when set, is a file receiving one JSON line per pixel comparison.
 */
import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { type Client, createClient } from 'graphql-ws';
import sharp from 'sharp';
import WebSocket from 'ws';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { CudaSampleLostError, type CudaStepExecutor, createCudaExecutor } from '../../src/pipeline/cuda-executor.ts';
import {
  CUDA_MODE_PSNR_FLOORS,
  CUDA_STEP_CACHE_RULES,
  type CudaModeStepCache,
} from '../../src/pipeline/cuda-step-cache.ts';
import type { FluxArgumentError } from '../../src/pipeline/flux/latents.ts';
import { loadFluxTokenizers } from '../../src/pipeline/flux/tokenize.ts';
import { CudaEngineClient, CudaEngineExitedError } from '../../src/runtime/cuda/index.ts';
import { writeBflRepo } from '../../tools/bfl-checkpoint.ts';
import { engineChildren } from '../helpers/engine-processes.ts';
import { MODEL_DIR, REPO_ROOT } from '../helpers/paths.ts';

export const BIN = process.env.CUDA_ENGINE_BIN
  ? resolve(process.env.CUDA_ENGINE_BIN)
  : join(REPO_ROOT, 'engines/cuda/build/fluxql-engine');
export const PRECISIONS = (process.env.FLUXQL_CUDA_PRECISIONS ?? 'f32,bf16').split(',').map((s) => s.trim());
const REPORT = process.env.FLUXQL_GPU_REPORT;

/** The first GPU's name from nvidia-smi, or undefined when there is none. */
function gpuName(): string | undefined {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    return out.split('\n')[0]?.trim() || undefined;
  } catch {
    return undefined;
  }
}

export const GPU = gpuName();
/** Why the checks cannot run here, or undefined when they can. */
export const SKIP = !existsSync(BIN)
  ? `no CUDA engine binary at ${BIN} (it is built on the GPU machine: engines/cuda/scripts/device-run.sh server)`
  : !GPU
    ? 'no NVIDIA GPU here (nvidia-smi lists none)'
    : undefined;

/** A group of checks with its setup, as both runners register it. */
export interface Suite {
  name: string;
  before?: () => Promise<void>;
  after?: () => Promise<void>;
  tests: { name: string; fn: () => Promise<void> }[];
}

export const PROMPT = 'a red fox in fresh snow, golden hour';
export const SEED = 1234;
export const WIDTH = 96;
export const HEIGHT = 64;
export const STEPS = 4;

/** The ONNX Runtime reference generation: the server jobs' images 0 and 1 must match it. */
export const ORT_REFERENCE_CASE = {
  prompt: PROMPT,
  seeds: [SEED, SEED + 1],
  width: WIDTH,
  height: HEIGHT,
  steps: STEPS,
};

/** ONNX Runtime reference images (CPU) for SEED and SEED + 1, RGB8 [HEIGHT, WIDTH, 3] each. */
export async function computeOrtReference(): Promise<Uint8Array[]> {
  // Imported here: only these checks need onnxruntime-node.
  const { FluxPipeline } = await import('../../src/pipeline/flux/pipeline.ts');
  const cacheDir = await mkdtemp(join(tmpdir(), 'fluxql-ort-cache-'));
  const pipe = await FluxPipeline.fromPretrained(MODEL_DIR, { compiler: engineCompiler, cacheDir });
  try {
    const r = await pipe.generate({
      prompts: [PROMPT, PROMPT],
      seed: [SEED, SEED + 1],
      width: WIDTH,
      height: HEIGHT,
      steps: STEPS,
    });
    return r.images.map((im) => im.data);
  } finally {
    await pipe.close();
    await rm(cacheDir, { recursive: true, force: true });
  }
}

/** One reference generation of the JSON file: what was asked, the steps it ran, RGB8 images as base64. */
export interface OrtReferenceEntry {
  case: unknown;
  totalSteps: number;
  images: string[];
}

/**
 * The reference JSON (`test/gpu/write-ort-reference.ts`): the {@link ORT_REFERENCE_CASE} images at the top level (as
 * before), and every further case keyed by name in `cases` (cuda-lora-edit-checks.ts).
 */
export interface OrtReferenceFile {
  case: unknown;
  model: string;
  images: string[];
  cases?: Record<string, OrtReferenceEntry>;
}

export function toBase64Images(images: Uint8Array[]): string[] {
  return images.map((im) => Buffer.from(im).toString('base64'));
}

export function fromBase64Images(images: string[]): Uint8Array[] {
  return images.map((b64) => new Uint8Array(Buffer.from(b64, 'base64')));
}

const refFiles = new Map<string, OrtReferenceFile>();
/**
 * The reference file FLUXQL_ORT_REFERENCE names (read once), made beforehand by `test/gpu/write-ort-reference.ts` on
 * a machine with ONNX Runtime; undefined when unset. The GPU machines' Node bundle leaves ONNX Runtime's native
 * library out to fit the device tool's 64 MiB (engines/cuda/scripts/pack-node.sh).
 */
export function ortReferenceFile(): OrtReferenceFile | undefined {
  const file = process.env.FLUXQL_ORT_REFERENCE;
  if (!file) return undefined;
  let ref = refFiles.get(file);
  if (!ref) {
    ref = JSON.parse(readFileSync(file, 'utf8')) as OrtReferenceFile;
    assert.equal(ref.model, basename(MODEL_DIR), `${file} was made with another model`);
    refFiles.set(file, ref);
  }
  return ref;
}

/** The {@link ORT_REFERENCE_CASE} images of the reference file. */
function readOrtReference(ref: OrtReferenceFile): Uint8Array[] {
  assert.deepEqual(ref.case, ORT_REFERENCE_CASE, 'the ORT reference file was made for another generation');
  return fromBase64Images(ref.images);
}

let ortImages: Promise<Uint8Array[]> | undefined;
/** ORT's images of {@link ORT_REFERENCE_CASE}: from FLUXQL_ORT_REFERENCE, else computed here once. */
export function ortReference(): Promise<Uint8Array[]> {
  const ref = ortReferenceFile();
  ortImages ??= ref ? Promise.resolve(readOrtReference(ref)) : computeOrtReference();
  return ortImages;
}

export function maxAbsDiff(a: Uint8Array, b: Uint8Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function report(line: Record<string, unknown>): void {
  if (REPORT) appendFileSync(REPORT, `${JSON.stringify({ gpu: GPU, ...line })}\n`);
}

/** Pids of the running engine processes (`BIN --serve`) that are children of `pid`. */
export function enginesOf(pid: number): number[] {
  return engineChildren(pid, BIN);
}

/** Polls `check` every 50 ms until it returns a value (the runner's timeout bounds the wait). */
export async function waitFor<T>(check: () => T | undefined): Promise<T> {
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail('expected a rejection');
}

// ---- engine client -------------------------------------------------------------------------------------------

const clientSuite: Suite = {
  name: 'CUDA engine client (real engine process)',
  tests: [
    {
      name: 'reports the card before loading; a killed engine fails the call in flight with CudaEngineExitedError',
      async fn() {
        const client = CudaEngineClient.start({ bin: BIN });
        try {
          const info = await client.info();
          assert.equal(info.device, GPU);
          assert.equal(info.loaded, false);
          assert.ok(info.memoryTotalBytes > 0);
          const loaded = await client.load(MODEL_DIR, 'f32');
          assert.equal(loaded.device, GPU);
          assert.equal(loaded.precision, 'f32');
          assert.equal((await client.info()).loaded, true);
          const tok = await loadFluxTokenizers(MODEL_DIR);
          // 1000 steps in one `step` request: the engine is surely mid-request when the first progress arrives.
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
          assert.equal(prepared.steps, steps);
          const progress: number[] = [];
          const err = await rejection(
            client.step(prepared.job, undefined, (p) => {
              progress.push(p.step);
              if (progress.length === 1) client.kill('SIGKILL');
            }),
          );
          assert.ok(err instanceof CudaEngineExitedError, String(err));
          assert.equal(err.signal, 'SIGKILL');
          assert.equal(progress[0], 1);
          assert.ok(progress.length < steps);
          assert.equal(await rejection(client.info()), err);
        } finally {
          client.kill('SIGKILL');
          await client.exited;
        }
      },
    },
  ],
};

// ---- executor ------------------------------------------------------------------------------------------------

/** One sample of the checks' standard request. */
function sampleRequest(seed: number) {
  return { prompt: PROMPT, height: HEIGHT, width: WIDTH, steps: STEPS, guidanceScale: 3.5, seed };
}

/** What the f32 executor of these checks (maxBatch 2) declares it runs. */
const F32_NO_FP8 = 'an f32 engine has no fp8 path (fp8 plans need the bf16 base precision)';
const F32_CAPABILITIES = {
  modes: ['original', 'XL'], // f32: no fp8 plan, so no S (cuda-modes.ts)
  unavailable: ['L', 'M', 'S'].map((mode) => ({ mode, reason: F32_NO_FP8 })),
  lora: true,
  control: true,
  edit: true,
  maxSide: 2048,
  maxBatch: 2,
};

function executorSuite(): Suite {
  let ex: CudaStepExecutor;
  return {
    name: 'CUDA executor (real engine process, f32)',
    async before() {
      ex = await createCudaExecutor({ modelDir: MODEL_DIR, engineBin: BIN, precision: 'f32', maxBatch: 2 });
    },
    async after() {
      await ex?.close();
    },
    tests: [
      {
        name: 'prepare / step (with previews) / decode, matching the ORT pipeline within 2/255',
        async fn() {
          assert.deepEqual(
            { ...ex.info(), path: undefined, benchmarks: undefined },
            {
              name: 'flux-tiny',
              path: undefined,
              capabilities: F32_CAPABILITIES,
              device: `cuda: ${GPU} (f32)`,
              engine: 'cuda',
              packedChannels: 64,
              pixelsPerToken: 16,
              benchmarks: undefined,
            },
          );
          const handles = await ex.prepare([sampleRequest(SEED), sampleRequest(SEED + 1)]);
          for (let s = 1; s <= STEPS; s++) {
            const r = await ex.step(handles, { preview: s === 2 });
            assert.deepEqual(
              r.map((x) => [x.step, x.totalSteps]),
              [
                [s, STEPS],
                [s, STEPS],
              ],
            );
            if (s === 2) assert.deepEqual([r[0]!.preview?.width, r[0]!.preview?.height], [WIDTH / 8, HEIGHT / 8]);
          }
          const images = await ex.decode(handles);
          const ort = await ortReference();
          const diffs = images.map((im, i) => {
            assert.deepEqual([im.width, im.height], [WIDTH, HEIGHT]);
            return maxAbsDiff(im.data, ort[i]!);
          });
          report({
            test: 'executor vs ORT',
            precision: 'f32',
            size: `${WIDTH}x${HEIGHT}`,
            steps: STEPS,
            max_abs_of_255: diffs,
          });
          for (const d of diffs) assert.ok(d <= 2, `max abs diff ${d}/255 > 2/255`);
          await ex.release(handles);
        },
      },
      {
        name: 'a joiner lands in the running engine batch (one engine job), both samples match ORT within 2/255',
        async fn() {
          const [a] = await ex.prepare([sampleRequest(SEED)]);
          await ex.step([a!]);
          await ex.step([a!]);
          // Prepared at a step boundary of a's job: the executor sends `join`, the engine keeps one job.
          const [b] = await ex.prepare([sampleRequest(SEED + 1)]);
          assert.equal((await ex.engineInfo()).jobs, 1);
          for (let s = 3; s <= STEPS; s++) {
            const r = await ex.step([a!, b!]);
            assert.deepEqual(
              r.map((x) => [x.step, x.totalSteps]),
              [
                [s, STEPS],
                [s - 2, STEPS],
              ],
            );
          }
          // a is done: decoded and released alone (the engine compacts the job to b), b finishes alone.
          const [imgA] = await ex.decode([a!]);
          await ex.release([a!]);
          assert.equal((await ex.engineInfo()).jobs, 1);
          await ex.step([b!]);
          await ex.step([b!]);
          const [imgB] = await ex.decode([b!]);
          await ex.release([b!]);
          assert.equal((await ex.engineInfo()).jobs, 0);
          const ort = await ortReference();
          const diffs = [maxAbsDiff(imgA!.data, ort[0]!), maxAbsDiff(imgB!.data, ort[1]!)];
          report({ test: 'executor join vs ORT', precision: 'f32', steps: STEPS, max_abs_of_255: diffs });
          for (const d of diffs) assert.ok(d <= 2, `joined: max abs diff ${d}/255 > 2/255`);
        },
      },
      {
        name: 'declares what it runs (the service refuses the rest) and refuses a bad size, typed',
        async fn() {
          assert.deepEqual(ex.info().capabilities, F32_CAPABILITIES);
          assert.ok(ex.loraAdmin);
          const size = await rejection(ex.prepare([{ ...sampleRequest(1), width: 100 }]));
          assert.equal((size as FluxArgumentError).param, 'width');
        },
      },
      {
        name: 'a killed engine loses its samples (CudaSampleLostError) and is restarted for later calls',
        async fn() {
          const [h] = await ex.prepare([sampleRequest(5)]);
          await ex.step([h!]);
          const before = await ex.stats();
          const pid = ex.enginePid();
          assert.ok(pid !== undefined);
          process.kill(pid, 'SIGKILL');
          // The executor notices the exit and starts a new engine at once.
          await waitFor(() => {
            const p = ex.enginePid();
            return p !== undefined && p !== pid ? p : undefined;
          });
          assert.ok((await rejection(ex.step([h!]))) instanceof CudaSampleLostError);
          await ex.release([h!]);
          const [h2] = await ex.prepare([sampleRequest(SEED)]);
          for (let s = 0; s < STEPS; s++) await ex.step([h2!]);
          const [img] = await ex.decode([h2!]);
          const diff = maxAbsDiff(img!.data, (await ortReference())[0]!);
          assert.ok(diff <= 2, `after the restart: max abs diff ${diff}/255 > 2/255`);
          await ex.release([h2!]);
          const after = await ex.stats();
          assert.equal(after.engineStarts, (before.engineStarts ?? 0) + 1);
          assert.equal(after.engineExits, (before.engineExits ?? 0) + 1);
        },
      },
    ],
  };
}

// ---- BFL single files -----------------------------------------------------------------------------------------

const bflSuite: Suite = {
  name: 'CUDA executor on BFL single files (real engine process, f32)',
  tests: [
    {
      name: 'loads flux1-dev.safetensors + ae.safetensors through the load spec and matches ORT within 2/255',
      async fn() {
        const dir = await mkdtemp(join(tmpdir(), 'fluxql-cuda-bfl-'));
        writeBflRepo(dir, 'F32');
        const ex = await createCudaExecutor({ modelDir: dir, engineBin: BIN, precision: 'f32', maxBatch: 2 });
        try {
          const handles = await ex.prepare([sampleRequest(SEED), sampleRequest(SEED + 1)]);
          for (let s = 0; s < STEPS; s++) await ex.step(handles);
          const images = await ex.decode(handles);
          const ort = await ortReference();
          const diffs = images.map((im, i) => maxAbsDiff(im.data, ort[i]!));
          report({ test: 'BFL files vs ORT (diffusers)', precision: 'f32', max_abs_of_255: diffs });
          for (const d of diffs) assert.ok(d <= 2, `max abs diff ${d}/255 > 2/255`);
        } finally {
          await ex.close();
          await rm(dir, { recursive: true, force: true });
        }
      },
    },
  ],
};

// ---- the server ----------------------------------------------------------------------------------------------

export interface Server {
  url: string;
  proc: ChildProcessWithoutNullStreams;
  log: string[];
  stop(): Promise<void>;
}

/** Starts `node bin/fluxql.js serve --engine cuda` on a free port and waits for its URL; `env` adds settings. */
export async function startServer(precision: string, env: Record<string, string> = {}): Promise<Server> {
  const imageDir = await mkdtemp(join(tmpdir(), 'fluxql-cuda-images-'));
  const cacheDir = await mkdtemp(join(tmpdir(), 'fluxql-cuda-cache-'));
  const proc = spawn(process.execPath, [join(REPO_ROOT, 'bin/fluxql.js'), 'serve', '--engine', 'cuda'], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      IMAGE_DIR: imageDir,
      MODEL_REPO: MODEL_DIR,
      MODEL_BATCH: '4',
      // A job below the batch size waits this long for companions: time for the check to subscribe before the
      // job leaves the queue, so every step event is seen.
      MAX_QUEUE_DELAY_MS: '2000',
      CUDA_ENGINE_BIN: BIN,
      CUDA_PRECISION: precision,
      // bf16: the planner calibrates on this fresh cache (L and M), not on a cache an earlier run left.
      CACHE_DIR: cacheDir,
      ...env,
    },
  });
  const log: string[] = [];
  const url = await new Promise<string>((resolveUrl, reject) => {
    proc.stdout.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      log.push(text);
      const m = /serving .*? at (http:\/\/[^\s)]+)/.exec(text);
      if (m) resolveUrl(m[1]!);
    });
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
      await rm(cacheDir, { recursive: true, force: true });
    },
  };
}

/** The fields the operations below select (each event type has a subset). */
export interface ProgressEvent {
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

export async function gql<T>(url: string, query: string, variables: Record<string, unknown> = {}): Promise<T> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await res.json()) as { data?: unknown; errors?: unknown };
  if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data as T;
}

const MODELS = 'query { models { id device specs { origin hardware width height steps latencySeconds source } } }';
export const GENERATE = `mutation($input: GenerateImageInput!) { generateImage(input: $input) { __typename
  ... on MutationGenerateImageSuccess { data { jobId totalSteps } }
  ... on ValidationError { field message } } }`;
const PROGRESS = `subscription($id: ID!) { jobProgress(id: $id) { __typename
  ... on JobSnapshotEvent { status step totalSteps }
  ... on JobStepEvent { step totalSteps }
  ... on JobSucceededEvent { images { url width height format } }
  ... on JobFailedEvent { code message } } }`;

/** Submits a job; returns its id. */
export async function submit(url: string, input: Record<string, unknown>): Promise<string> {
  const r = await gql<GenerateData>(url, GENERATE, { input });
  assert.equal(r.generateImage.__typename, 'MutationGenerateImageSuccess', JSON.stringify(r));
  return r.generateImage.data!.jobId;
}

/**
 * Follows a job's jobProgress stream (a snapshot first) to the end and returns the events; `onEvent` sees each as it
 * comes.
 */
export function follow(client: Client, jobId: string, onEvent?: (e: ProgressEvent) => void): Promise<ProgressEvent[]> {
  return new Promise((resolveEvents, reject) => {
    const events: ProgressEvent[] = [];
    client.subscribe(
      { query: PROGRESS, variables: { id: jobId } },
      {
        next: (v) => {
          if (v.errors) return reject(new Error(JSON.stringify(v.errors)));
          const e = (v.data as { jobProgress: ProgressEvent }).jobProgress;
          events.push(e);
          onEvent?.(e);
        },
        error: reject,
        complete: () => resolveEvents(events),
      },
    );
  });
}

/** Submits a job, follows its jobProgress stream to the end and returns the events. */
export async function generate(url: string, client: Client, input: Record<string, unknown>): Promise<ProgressEvent[]> {
  return follow(client, await submit(url, input));
}

const JOB_STATUS = 'query($id: ID!) { job(id: $id) { __typename ... on QueryJobSuccess { data { status } } } }';

/** A job's status (QUEUED, RUNNING, ...). */
export async function jobStatus(url: string, jobId: string): Promise<string> {
  const r = await gql<{ job: { __typename: string; data?: { status: string } } }>(url, JOB_STATUS, { id: jobId });
  assert.equal(r.job.__typename, 'QueryJobSuccess', JSON.stringify(r));
  return r.job.data!.status;
}

/** A Prometheus sample of the server's `/metrics` without labels (0 when absent). */
export async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

/**
 * Submits `first` with the server's engine process paused (SIGSTOP), waits until the job is admitted (RUNNING: its
 * engine `prepare` waits on the paused engine), submits `second` (queued behind the running batch), resumes the
 * engine and follows both to the end. The scheduler steps the first job once and then admits the second at that step
 * boundary when the running batch's key matches (mode, size, steps, LoRA set): a join whatever the engine's speed.
 */
export async function whileFirstRuns(
  server: Server,
  client: Client,
  first: Record<string, unknown>,
  second: Record<string, unknown>,
): Promise<[ProgressEvent[], ProgressEvent[]]> {
  const engines = enginesOf(server.proc.pid!);
  assert.equal(engines.length, 1, `engine processes: ${engines.join(', ')}`);
  process.kill(engines[0]!, 'SIGSTOP');
  let followed: [Promise<ProgressEvent[]>, Promise<ProgressEvent[]>];
  try {
    const a = await submit(server.url, first);
    // Admitted after the server's MAX_QUEUE_DELAY_MS (no companion comes).
    while ((await jobStatus(server.url, a)) !== 'RUNNING') await new Promise((r) => setTimeout(r, 50));
    const b = await submit(server.url, second);
    assert.equal(await jobStatus(server.url, b), 'QUEUED');
    // Subscribed (snapshots received) before the engine resumes: every step event of both jobs is seen.
    const live: Promise<void>[] = [];
    const track = (id: string) => {
      let seen!: () => void;
      live.push(new Promise<void>((r) => (seen = r)));
      return follow(client, id, () => seen());
    };
    followed = [track(a), track(b)];
    // (A stream failing before its snapshot fails here, not hangs.)
    await Promise.race([Promise.all(live), Promise.all(followed)]);
  } finally {
    process.kill(engines[0]!, 'SIGCONT');
  }
  return Promise.all(followed);
}

/** A graphql-ws client of the server at `url` (connected at once, no retries). */
export function wsClient(url: string): Client {
  return createClient({
    url: `${url.replace(/^http/, 'ws')}/graphql`,
    webSocketImpl: WebSocket,
    lazy: false,
    retryAttempts: 0,
  });
}

export async function fetchRgb(imageUrl: string) {
  const res = await fetch(imageUrl);
  assert.equal(res.status, 200);
  const bytes = Buffer.from(await res.arrayBuffer());
  const meta = await sharp(bytes).metadata();
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  assert.equal(info.channels, 3);
  return { data: new Uint8Array(data), width: info.width, height: info.height, format: meta.format };
}

function serverSuite(precision: string): Suite {
  let server: Server;
  let client: Client;
  // bf16: 12/255; a bf16 VAE decode alone is up to 9.7/255 off the f32 image (engines/cuda/tests/bf16_decode_bound.py).
  const tolerance = precision === 'f32' ? 2 : 12;
  return {
    name: `fluxql serve --engine cuda (${precision})`,
    async before() {
      server = await startServer(precision);
      client = wsClient(server.url);
    },
    async after() {
      await client?.dispose();
      await server?.stop();
    },
    tests: [
      {
        name: 'models reports the GPU and the engine benchmark of this precision',
        async fn() {
          const { models } = await gql<ModelsData>(server.url, MODELS);
          // One loaded engine serves every CUDA mode (cuda-modes.ts): L, M (planned at start) and S need a bf16 base.
          assert.deepEqual(
            models.map((m) => m.id),
            precision === 'f32'
              ? ['flux-1-dev-original-bs4', 'flux-1-dev-xl-bs4']
              : ['original', 'xl', 'l', 'm', 's'].map((size) => `flux-1-dev-${size}-bs4`),
          );
          assert.equal(models[0]!.device, `cuda: ${GPU} (${precision})`);
          const bench = models[0]!.specs.filter((s) => s.origin === 'MEASURED' && /cuda-h100\.json/.test(s.source));
          if (precision === 'bf16') {
            assert.ok(bench.length > 0);
            for (const s of bench) {
              assert.deepEqual([s.hardware, s.width, s.height, s.steps], ['NVIDIA H100 80GB HBM3', 1024, 1024, 28]);
            }
          } else {
            assert.deepEqual(bench, []); // no benchmark at this precision: no other precision's numbers shown
          }
        },
      },
      {
        name: `generateImage streams every step over graphql-ws; PNGs match ORT within ${tolerance}/255`,
        async fn() {
          const events = await generate(server.url, client, {
            prompt: PROMPT,
            seed: SEED,
            width: WIDTH,
            height: HEIGHT,
            steps: STEPS,
            numImages: 2,
            outputFormat: 'PNG',
          });
          assert.equal(events[0]?.__typename, 'JobSnapshotEvent', JSON.stringify(events[0]));
          assert.equal(events[0]?.step, 0);
          const steps = events.filter((e) => e.__typename === 'JobStepEvent');
          assert.deepEqual(
            steps.map((e) => e.step),
            [1, 2, 3, 4],
          );
          for (const e of steps) assert.equal(e.totalSteps, STEPS);
          const last = events.at(-1);
          assert.equal(last?.__typename, 'JobSucceededEvent', JSON.stringify(last));
          assert.equal(last?.images?.length, 2);
          const ort = await ortReference();
          const diffs: number[] = [];
          for (const [k, image] of (last?.images ?? []).entries()) {
            assert.deepEqual([image.width, image.height, image.format], [WIDTH, HEIGHT, 'PNG']);
            const rgb = await fetchRgb(image.url);
            assert.deepEqual([rgb.format, rgb.width, rgb.height], ['png', WIDTH, HEIGHT]);
            diffs.push(maxAbsDiff(rgb.data, ort[k]!));
          }
          report({
            test: 'server vs ORT',
            precision,
            size: `${WIDTH}x${HEIGHT}`,
            steps: STEPS,
            seeds: [SEED, SEED + 1],
            max_abs_of_255: diffs,
          });
          for (const d of diffs) assert.ok(d <= tolerance, `max abs diff ${d}/255 > ${tolerance}/255`);
        },
      },
      {
        name: `a compatible request admitted while a job runs joins its engine batch (/metrics); PNGs match ORT within ${tolerance}/255`,
        async fn() {
          const counters = async () => ({
            jobs: await metric(server.url, 'fluxql_engine_jobs_total'),
            joined: await metric(server.url, 'fluxql_engine_joined_samples_total'),
          });
          const one = (seed: number, side?: number) => ({
            prompt: PROMPT,
            seed,
            width: side ?? WIDTH,
            height: side ?? HEIGHT,
            steps: STEPS,
            outputFormat: 'PNG',
          });
          // A (SEED) runs; B (SEED + 1, ORT's image 1) is admitted at A's first step boundary and joins A's job.
          const before = await counters();
          const events = await whileFirstRuns(server, client, one(SEED), one(SEED + 1));
          const joined = await counters();
          const ort = await ortReference();
          const diffs: number[] = [];
          for (const [k, ev] of events.entries()) {
            assert.deepEqual(
              ev.filter((e) => e.__typename === 'JobStepEvent').map((e) => e.step),
              [1, 2, 3, 4],
            );
            const last = ev.at(-1);
            assert.equal(last?.__typename, 'JobSucceededEvent', JSON.stringify(last));
            assert.equal(last?.images?.length, 1);
            const rgb = await fetchRgb(last!.images![0]!.url);
            assert.deepEqual([rgb.width, rgb.height], [WIDTH, HEIGHT]);
            diffs.push(maxAbsDiff(rgb.data, ort[k]!));
          }
          report({
            test: 'server join vs ORT',
            precision,
            size: `${WIDTH}x${HEIGHT}`,
            steps: STEPS,
            seeds: [SEED, SEED + 1],
            engineJobs: joined.jobs - before.jobs,
            joinedSamples: joined.joined - before.joined,
            max_abs_of_255: diffs,
          });
          assert.deepEqual(joined, { jobs: before.jobs + 1, joined: before.joined + 1 }, 'B did not join A');
          for (const d of diffs) assert.ok(d <= tolerance, `max abs diff ${d}/255 > ${tolerance}/255`);
          // Another size never joins: its own engine job once A's batch is done.
          const other = await whileFirstRuns(server, client, one(SEED), one(SEED, 64));
          for (const ev of other) assert.equal(ev.at(-1)?.__typename, 'JobSucceededEvent', JSON.stringify(ev.at(-1)));
          assert.deepEqual(await counters(), { jobs: joined.jobs + 2, joined: joined.joined });
        },
      },
      {
        name: 'after the engine is killed, the server restarts it and the next request succeeds',
        async fn() {
          const engines = enginesOf(server.proc.pid!);
          assert.equal(engines.length, 1, `engine processes: ${engines.join(', ')}`);
          process.kill(engines[0]!, 'SIGKILL');
          await waitFor(() => {
            const now = enginesOf(server.proc.pid!);
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
          assert.equal(last?.__typename, 'JobSucceededEvent', JSON.stringify(last));
          assert.deepEqual(
            events.filter((e) => e.__typename === 'JobStepEvent').map((e) => e.step),
            [1, 2],
          );
          assert.match(server.log.join(''), /CUDA engine pid \d+ ended: .*killed by SIGKILL/);
        },
      },
    ],
  };
}

// ---- planned modes (issue 15) ------------------------------------------------------------------------------------

/** Mean |a - b| over RGB8 bytes. */
function meanAbsDiff(a: Uint8Array, b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
  return s / a.length;
}

function plannedSuite(): Suite {
  let cacheDir: string;
  const logs: string[] = [];
  const open = () =>
    createCudaExecutor({
      modelDir: MODEL_DIR,
      engineBin: BIN,
      precision: 'bf16',
      maxBatch: 2,
      cacheDir,
      onLog: (l) => logs.push(l),
    });
  return {
    name: 'CUDA planner: L and M from calibrated plans (bf16, flux-tiny)',
    async before() {
      cacheDir = await mkdtemp(join(tmpdir(), 'fluxql-cuda-plans-'));
    },
    async after() {
      await rm(cacheDir, { recursive: true, force: true });
    },
    tests: [
      {
        name: 'calibrates on first start, stores the manifest, serves L and M near original; a restart reads it',
        async fn() {
          const ex = await open();
          try {
            assert.deepEqual(ex.info().capabilities.modes, ['original', 'XL', 'L', 'M', 'S'], logs.join('\n'));
            const files = readdirSync(join(cacheDir, 'cuda-plans')).filter((f) => f.endsWith('.json'));
            assert.equal(files.length, 1);
            const m = JSON.parse(readFileSync(join(cacheDir, 'cuda-plans', files[0]!), 'utf8')) as {
              plans: Record<string, { measuredError: number; budget: number; counts: { fp8: number } }>;
              preset: { kept: boolean; measuredError: number };
              served: Record<string, { plan: string; rules: string }>;
              stepCache: Record<string, CudaModeStepCache>;
            };
            for (const mode of ['L', 'M', 'S']) assert.ok(m.plans[mode]!.measuredError <= m.plans[mode]!.budget);
            // Per-mode step caching (cuda-step-cache.ts): calibrated for each planned mode, a served threshold keeps
            // the mode's PSNR floor against original, and the models query's source reports it.
            const plansReported = ex.info().modePlans ?? {};
            for (const mode of ['L', 'M', 'S'] as const) {
              const c = m.stepCache[mode];
              assert.ok(c && c.threshold >= 0 && c.tried.length > 0, `${mode}: ${JSON.stringify(c)}`);
              assert.equal(c.minPsnr, CUDA_MODE_PSNR_FLOORS[mode]);
              if (c.threshold > 0) assert.ok(c.psnr >= c.minPsnr, `${mode}: ${JSON.stringify(c)}`);
              // The kept rule is one of those searched (at most 1 or 2 cached steps in a row).
              assert.ok(
                CUDA_STEP_CACHE_RULES.some((r) => r.maxConsecutive === c.maxConsecutive),
                `${mode}: ${JSON.stringify(c)}`,
              );
              assert.deepEqual(plansReported[mode]?.stepCache, {
                threshold: c.threshold,
                maxConsecutive: c.maxConsecutive,
                fullSteps: c.fullSteps,
                cachedSteps: c.cachedSteps,
                psnr: c.psnr,
                minPsnr: c.minPsnr,
              });
            }
            report({
              test: 'planned modes step caching (calibration at 512x512, 28 steps, worst of 2 prompts vs original)',
              stepCache: Object.fromEntries(
                ['L', 'M', 'S'].map((k) => {
                  const c = m.stepCache[k]!;
                  return [
                    k,
                    {
                      ...c,
                      tried: c.tried.map(
                        (t) => `max${t.maxConsecutive} ${t.threshold}:${t.psnr.toFixed(2)}/${t.cachedSteps}`,
                      ),
                    },
                  ];
                }),
              ),
              calibrationLog: logs.filter((l) => /step cach/.test(l)),
            });
            const reqs = ['original', 'L', 'M'].map((mode) => ({ ...sampleRequest(SEED), mode }));
            const handles = await ex.prepare(reqs);
            for (let i = 0; i < STEPS; i++) await ex.step(handles);
            const [o, l, mm] = await ex.decode(handles);
            await ex.release(handles);
            const diffs = { L: meanAbsDiff(l!.data, o!.data), M: meanAbsDiff(mm!.data, o!.data) };
            report({
              test: 'planned L/M vs original (bf16, mean abs of 255)',
              diffs,
              plans: Object.fromEntries(['L', 'M', 'S'].map((k) => [k, m.plans[k]!.counts.fp8])),
              measured: Object.fromEntries(['L', 'M', 'S'].map((k) => [k, m.plans[k]!.measuredError])),
              preset: m.preset,
              served: Object.fromEntries(Object.entries(m.served).map(([k, v]) => [k, v.plan])),
              stepCacheStats: (await ex.stats()).stepCache ?? null,
            });
            // Images, not noise or a blank: within a loose bound of original's (the plans hold 1-1.5 % error).
            for (const img of [l!, mm!]) assert.ok(new Set(img.data).size > 16, 'a flat image');
            assert.ok(diffs.L <= 8 && diffs.M <= 8, `L/M far from original: ${JSON.stringify(diffs)}`);
          } finally {
            await ex.close();
          }
          logs.length = 0;
          const again = await open();
          try {
            assert.deepEqual(again.info().capabilities.modes, ['original', 'XL', 'L', 'M', 'S']);
            assert.ok(
              logs.some((l) => /using stored plans/.test(l)),
              logs.join('\n'),
            );
            assert.ok(!logs.some((l) => /calibrating/.test(l)), logs.join('\n'));
          } finally {
            await again.close();
          }
        },
      },
    ],
  };
}

/** Every suite, in run order. */
export function cudaSuites(): Suite[] {
  return [clientSuite, executorSuite(), bflSuite, plannedSuite(), ...PRECISIONS.map(serverSuite)];
}
