/**
 * @file Load benchmark (not a test): throughput and p50/p99 latency of `POST /v1/images/generations` at 1, 4 and
 * 16 concurrent clients, with batching on (MODEL_BATCH=4) and off (MODEL_BATCH=1), against a real server on a
 * free port with the embedded model (or MODEL_REPO). Also samples the latency of a `models` query under load,
 * which shows whether the event loop stays free.
 *
 * Writes `bench/results/load.{json,md}` and `charts/throughput-vs-clients.svg`.
 *
 * Run: `npm run bench:load` (knobs: BENCH_SIZE=128, BENCH_STEPS=8, BENCH_PER_CLIENT=3, BENCH_LEVELS=1,4,16,
 * BENCH_BATCH=4, THREADS).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config.ts';
import { startServer } from '../src/main.ts';
import { renderCharts } from './lib/charts.ts';
import { type Bar, createProgress } from './lib/progress.ts';
import { describeMachine, writeResults } from './lib/results.ts';

const SIZE = Number(process.env.BENCH_SIZE ?? 128);
const STEPS = Number(process.env.BENCH_STEPS ?? 8);
const PER_CLIENT = Number(process.env.BENCH_PER_CLIENT ?? 3);
const LEVELS = (process.env.BENCH_LEVELS ?? '1,4,16').split(',').map(Number);
const BATCH = Number(process.env.BENCH_BATCH ?? 4);
const REPO = fileURLToPath(new URL('..', import.meta.url));
const progress = createProgress();

interface Row {
  batching: string;
  clients: number;
  requests: number;
  failed: number;
  seconds: number;
  throughput: number;
  p50: number;
  p99: number;
  modelsP50: number;
  modelsMax: number;
  batches: number;
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1);
  return sorted[Math.max(0, i)] as number;
}

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

async function one(url: string, seed: number): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-model-name': 'flux-1-dev' },
    body: JSON.stringify({
      prompt: 'a lighthouse on a cliff at dawn, oil painting',
      seed,
      width: SIZE,
      height: SIZE,
      num_inference_steps: STEPS,
    }),
  });
  await res.arrayBuffer();
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return performance.now() - t0;
}

async function level(url: string, batching: string, clients: number, bar: Bar): Promise<Row> {
  const latencies: number[] = [];
  const modelsMs: number[] = [];
  let failed = 0;
  let done = false;
  const before = await metric(url, 'fluxql_batches_total');
  // Probe the event loop: a cheap GraphQL query every 200 ms while the load runs.
  const probe = (async () => {
    while (!done) {
      const t0 = performance.now();
      await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: '{ models { id } }' }),
      });
      modelsMs.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let k = 0; k < PER_CLIENT; k++) {
        try {
          latencies.push(await one(url, c * 1000 + k));
        } catch {
          failed++;
        }
        bar.tick(`batching ${batching}, ${clients} clients`);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  done = true;
  await probe;
  latencies.sort((a, b) => a - b);
  modelsMs.sort((a, b) => a - b);
  return {
    batching,
    clients,
    requests: latencies.length,
    failed,
    seconds,
    throughput: latencies.length / seconds,
    p50: quantile(latencies, 0.5) / 1000,
    p99: quantile(latencies, 0.99) / 1000,
    modelsP50: quantile(modelsMs, 0.5),
    modelsMax: modelsMs.at(-1) ?? Number.NaN,
    batches: (await metric(url, 'fluxql_batches_total')) - before,
  };
}

async function run(batch: number): Promise<Row[]> {
  const imageDir = await mkdtemp(join(tmpdir(), 'fluxql-bench-'));
  const config = loadConfig(process.env, {
    port: 0,
    host: '127.0.0.1',
    modelBatch: batch,
    imageDir,
    maxQueueSize: 256,
    // Request and job log lines would interleave with the bars.
    logLevel: 'warn',
  });
  const server = await startServer(config);
  const label = batch > 1 ? `on (bs${batch})` : 'off (bs1)';
  const bar = progress.bar(
    `batching ${label}`,
    LEVELS.reduce((n, c) => n + c * PER_CLIENT, 0),
  );
  try {
    bar.task('warm-up');
    await one(server.url, 0); // warm-up: first-call allocations and caches
    const rows: Row[] = [];
    for (const clients of LEVELS) rows.push(await level(server.url, label, clients, bar));
    return rows;
  } finally {
    bar.done();
    await server.stop();
    await rm(imageDir, { recursive: true, force: true });
  }
}

const date = new Date().toISOString();
// Other processes on the machine skew the numbers: record how busy it was when the run started.
const loadBefore = Number((loadavg()[0] ?? 0).toFixed(2));
const rows = [...(await run(BATCH)), ...(await run(1))];
const machine = { ...describeMachine(), loadBefore };
const settings = { size: SIZE, steps: STEPS, perClient: PER_CLIENT, levels: LEVELS, batch: BATCH };
const md = [
  `# REST load: throughput and latency against concurrent clients (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}; embedded model unless MODEL_REPO; ` +
    `1-minute load average at the start: ${loadBefore} (above the core count, other processes competed for the cores).`,
  `Method: \`POST /v1/images/generations\`, ${SIZE}x${SIZE}, ${STEPS} steps, ${PER_CLIENT} requests per client, clients in ` +
    `parallel, after one warm-up request; a \`models\` GraphQL query every 200 ms meanwhile measures how free the event loop stays.`,
  'Chart: charts/throughput-vs-clients.svg.',
  '',
  '| batching | clients | requests | failed | img/s | p50 s | p99 s | engine batches | models p50 ms | models max ms |',
  '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ...rows.map(
    (r) =>
      `| ${r.batching} | ${r.clients} | ${r.requests} | ${r.failed} | ${r.throughput.toFixed(2)} | ${r.p50.toFixed(2)} | ` +
      `${r.p99.toFixed(2)} | ${r.batches} | ${r.modelsP50.toFixed(1)} | ${r.modelsMax.toFixed(1)} |`,
  ),
  '',
].join('\n');
writeResults(REPO, 'load', { benchmark: 'load', date, machine, settings, rows }, md);
await renderCharts(join(REPO, 'bench/results'), 'load.json');
progress.stop();
process.stdout.write(`${md}\n`);
