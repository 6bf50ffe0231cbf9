/**
 * @file Scale-out benchmark (not a test): throughput in jobs/minute of one API node with 1, 2 and 4 CPU worker
 * processes sharing a private redis-server, on the embedded flux-tiny model (or MODEL_REPO). Every level starts
 * fresh processes, warms each worker up, then sends BENCH_JOBS concurrent `POST /v1/images/generations`.
 * Writes `bench/results/scale-out.{json,md}` and `charts/throughput-vs-workers.svg`.
 *
 * Run: `npm run bench:scale` (knobs: BENCH_WORKERS=1,2,4, BENCH_JOBS=24, BENCH_SIZE=256, BENCH_STEPS=8,
 * BENCH_BATCH=2, THREADS=1 per worker). Needs redis-server on PATH.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { disposeCluster, findRedisServer, startApi, startRedis, startWorker } from '../tools/cluster.ts';
import { renderCharts } from './lib/charts.ts';
import { type Bar, createProgress } from './lib/progress.ts';

const LEVELS = (process.env.BENCH_WORKERS ?? '1,2,4').split(',').map(Number);
const JOBS = Number(process.env.BENCH_JOBS ?? 24);
const SIZE = Number(process.env.BENCH_SIZE ?? 256);
const STEPS = Number(process.env.BENCH_STEPS ?? 8);
const BATCH = process.env.BENCH_BATCH ?? '2';
const THREADS = process.env.THREADS ?? '1';
const progress = createProgress();

interface Row {
  workers: number;
  /** 1-minute load average when the level started: other processes on the machine skew the numbers. */
  loadBefore: number;
  jobs: number;
  failed: number;
  seconds: number;
  jobsPerMinute: number;
  p50Seconds: number;
  maxSeconds: number;
}

async function generate(url: string, seed: number): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({
      prompt: 'a lighthouse on a cliff at dawn, oil painting',
      seed,
      size: `${SIZE}x${SIZE}`,
      num_inference_steps: STEPS,
      response_format: 'url',
    }),
  });
  await res.arrayBuffer();
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return (performance.now() - t0) / 1000;
}

async function waitForWorkers(url: string, n: number): Promise<void> {
  for (;;) {
    const body = (await (await fetch(`${url}/readyz`)).json()) as { workers?: number };
    if ((body.workers ?? 0) >= n) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function level(redisBin: string, workers: number, bar: Bar): Promise<Row> {
  const loadBefore = Number((loadavg()[0] ?? 0).toFixed(2));
  const redis = await startRedis(redisBin);
  const imageDir = await mkdtemp(join(tmpdir(), 'fluxql-bench-scale-'));
  const env = { REDIS_URL: redis.url, IMAGE_DIR: imageDir, MODEL_BATCH: BATCH, THREADS, MAX_QUEUE_SIZE: '1000' };
  try {
    const [api] = await Promise.all([
      startApi(env),
      ...Array.from({ length: workers }, (_, k) => startWorker({ ...env, WORKER_ID: `bench-${k + 1}` })),
    ]);
    bar.task(`${workers} workers: starting`);
    await waitForWorkers(api.url, workers);
    bar.task(`${workers} workers: warm-up`);
    // Warm-up: every worker loads its engines' first run.
    await Promise.all(Array.from({ length: workers * Number(BATCH) }, (_, k) => generate(api.url, 10_000 + k)));
    const t0 = performance.now();
    bar.task(`${workers} workers: ${JOBS} jobs`);
    const results = await Promise.allSettled(
      Array.from({ length: JOBS }, (_, k) => generate(api.url, k).finally(() => bar.tick())),
    );
    const seconds = (performance.now() - t0) / 1000;
    const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])).sort((a, b) => a - b);
    return {
      workers,
      loadBefore,
      jobs: JOBS,
      failed: JOBS - ok.length,
      seconds: Number(seconds.toFixed(2)),
      jobsPerMinute: Number(((ok.length / seconds) * 60).toFixed(1)),
      p50Seconds: Number((ok[Math.floor(ok.length / 2)] ?? Number.NaN).toFixed(2)),
      maxSeconds: Number((ok.at(-1) ?? Number.NaN).toFixed(2)),
    };
  } finally {
    await disposeCluster();
    await rm(imageDir, { recursive: true, force: true });
  }
}

const redisBin = findRedisServer();
if (!redisBin) {
  console.error('redis-server not found on PATH; install it (Debian: apt-get install redis-server)');
  process.exit(1);
}
const rows: Row[] = [];
const bar = progress.bar('scale-out', LEVELS.length * JOBS);
for (const n of LEVELS) rows.push(await level(redisBin, n, bar));
bar.done();
const machine = { cpus: availableParallelism(), cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version };
const settings = {
  size: `${SIZE}x${SIZE}`,
  steps: STEPS,
  modelBatch: Number(BATCH),
  threadsPerWorker: Number(THREADS),
};
const out = join(import.meta.dirname, 'results');
await mkdir(out, { recursive: true });
await writeFile(
  join(out, 'scale-out.json'),
  `${JSON.stringify({ date: new Date().toISOString(), machine, settings, rows }, null, 2)}\n`,
);
const base = rows[0]?.jobsPerMinute ?? 1;
const md = [
  '# Scale-out throughput (flux-tiny, CPU workers)',
  '',
  `One API node, N worker processes, one redis-server, all on one machine with ${machine.cpus} cores ` +
    `(${machine.cpuModel}), Node ${machine.node}. ${JOBS} concurrent REST requests per level, ` +
    `${settings.size}, ${STEPS} steps, MODEL_BATCH=${BATCH}, THREADS=${THREADS} per worker, after a warm-up.`,
  '',
  '| workers | jobs | failed | seconds | jobs/min | speed-up | p50 s | max s | load avg before |',
  '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ...rows.map(
    (r) =>
      `| ${r.workers} | ${r.jobs} | ${r.failed} | ${r.seconds} | ${r.jobsPerMinute} | ` +
      `${(r.jobsPerMinute / base).toFixed(2)}× | ${r.p50Seconds} | ${r.maxSeconds} | ${r.loadBefore} |`,
  ),
  '',
  `Workers beyond the core count (${machine.cpus}) share cores with each other, the API node and Redis, so ` +
    'throughput stops scaling there; on GPUs each worker owns its device. A load average above the core count ' +
    'means other processes were competing for the same cores during the run.',
  '',
  'Chart: charts/throughput-vs-workers.svg.',
  '',
].join('\n');
await writeFile(join(out, 'scale-out.md'), md);
await renderCharts(out, 'scale-out.json');
progress.stop();
console.log(md);
