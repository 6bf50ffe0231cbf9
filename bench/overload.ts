/**
 * @file Overload benchmark (not a test): a real `fluxql serve` process on the embedded model (or MODEL_REPO) is
 * offered 4x the request rate it can serve, open loop, for 60 s over REST. Records how many requests were accepted
 * and how many refused (429 `queue_full` with Retry-After), whether every accepted request completed with its
 * image, the server's event-loop lag (prom-client's `monitorEventLoopDelay` histogram on `/metrics`, p99 per
 * 5-second scrape window), its peak resident memory (the process tree, from /proc) and the machine's load average.
 *
 * Capacity is measured first: BENCH_CALIBRATE_S seconds of closed-loop load with 2x MODEL_BATCH clients.
 *
 * Run: `npm run bench:overload` (knobs: BENCH_SIZE=128, BENCH_STEPS=8, BENCH_SECONDS=60, BENCH_FACTOR=4,
 * BENCH_CALIBRATE_S=15, MODEL_BATCH=4, MAX_QUEUE_SIZE=64, THREADS). Writes bench/results/overload.{json,md}.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { describeMachine, writeResults } from './lib/results.ts';

const REPO = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
const SIZE = Number(process.env.BENCH_SIZE ?? 128);
const STEPS = Number(process.env.BENCH_STEPS ?? 8);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 60);
const FACTOR = Number(process.env.BENCH_FACTOR ?? 4);
const CALIBRATE_S = Number(process.env.BENCH_CALIBRATE_S ?? 15);
const BATCH = Number(process.env.MODEL_BATCH ?? 4);
const QUEUE = Number(process.env.MAX_QUEUE_SIZE ?? 64);
const MB = 2 ** 20;

/** Starts `fluxql serve` on a free port; resolves with its URL. */
async function startServer(imageDir: string): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(process.execPath, [join(REPO, 'bin/fluxql.js'), 'serve'], {
    cwd: REPO,
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      IMAGE_DIR: imageDir,
      MODEL_BATCH: String(BATCH),
      MAX_QUEUE_SIZE: String(QUEUE),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const url = await new Promise<string>((ok, fail) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = /serving \S+ on engine \S+ at (http:\/\/[\d.:]+)/.exec(out);
      if (m?.[1]) ok(m[1]);
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.once('exit', (code) => fail(new Error(`server exited (${code}) before listening:\n${out}`)));
  });
  return { proc, url };
}

/** Resident memory of a process and all its descendants (engine child processes included), bytes. */
function treeResidentBytes(root: number): number {
  const parent = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // Fields after the command name, which is in parentheses and may contain spaces: state ppid ...
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(Number(name), ppid);
    } catch {
      // The process ended while we looked.
    }
  }
  let total = 0;
  for (const pid of parent.keys()) {
    let p: number | undefined = pid;
    while (p !== undefined && p !== root && p > 1) p = parent.get(p);
    if (p !== root) continue;
    try {
      const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
      total += Number(kb ?? 0) * 1024;
    } catch {
      // Ended meanwhile.
    }
  }
  return total;
}

/** A Prometheus sample (sum over label sets) from the server's `/metrics`. */
async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

/** Jobs the server recorded as FAILED (`fluxql_jobs_total{status="FAILED"}`). */
async function failedJobs(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = /^fluxql_jobs_total\{status="FAILED"\}\s+(\S+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

type Outcome = 'completed' | 'refused' | 'failed';

/** One REST generation; its outcome and wall time. */
async function request(url: string, seed: number): Promise<{ outcome: Outcome; status: number; ms: number }> {
  const t0 = performance.now();
  try {
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt: 'a lighthouse at dawn',
        seed,
        width: SIZE,
        height: SIZE,
        num_inference_steps: STEPS,
      }),
    });
    const body = await res.arrayBuffer();
    const ms = performance.now() - t0;
    if (res.status === 200 && body.byteLength > 0) return { outcome: 'completed', status: 200, ms };
    if (res.status === 429 && res.headers.get('retry-after')) return { outcome: 'refused', status: 429, ms };
    return { outcome: 'failed', status: res.status, ms };
  } catch {
    return { outcome: 'failed', status: 0, ms: performance.now() - t0 };
  }
}

function quantile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

/** Closed loop with `clients` clients for `seconds`: completed requests per second. */
async function capacity(url: string, clients: number, seconds: number): Promise<number> {
  const end = performance.now() + seconds * 1000;
  let done = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; performance.now() < end; i++) {
        if ((await request(url, c * 100_000 + i)).outcome === 'completed') done++;
      }
    }),
  );
  return done / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const imageDir = mkdtempSync(join(tmpdir(), 'fluxql-overload-'));
  const loadBefore = loadavg();
  const { proc, url } = await startServer(imageDir);
  const pid = proc.pid as number;
  try {
    const idleRss = treeResidentBytes(pid);
    console.log(`[overload] server ${url} (pid ${pid}), idle RSS ${(idleRss / MB).toFixed(0)} MB; calibrating...`);
    await capacity(url, 1, 2); // warm-up (first runs allocate)
    const served = await capacity(url, 2 * BATCH, CALIBRATE_S);
    const offered = served * FACTOR;
    console.log(
      `[overload] capacity ${served.toFixed(2)} req/s; offering ${offered.toFixed(2)} req/s for ${SECONDS} s`,
    );

    let peakRss = treeResidentBytes(pid);
    const rssTimer = setInterval(() => {
      peakRss = Math.max(peakRss, treeResidentBytes(pid));
    }, 200);
    const lagWindows: number[] = [];
    await metric(url, 'fluxql_nodejs_eventloop_lag_p99_seconds'); // resets the histogram: windows start now
    const lagTimer = setInterval(() => {
      void metric(url, 'fluxql_nodejs_eventloop_lag_p99_seconds').then((s) => lagWindows.push(s * 1000));
    }, 5000);

    // Open loop: one request every 1/offered s, whatever the server answers.
    const results: Promise<{ outcome: Outcome; status: number; ms: number }>[] = [];
    const start = performance.now();
    const interval = 1000 / offered;
    for (let i = 0; performance.now() - start < SECONDS * 1000; i++) {
      const due = start + i * interval;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      results.push(request(url, 1_000_000 + i));
    }
    const sendSeconds = (performance.now() - start) / 1000;
    const all = await Promise.all(results);
    const drainSeconds = (performance.now() - start) / 1000 - sendSeconds;
    clearInterval(rssTimer);
    clearInterval(lagTimer);
    lagWindows.push((await metric(url, 'fluxql_nodejs_eventloop_lag_p99_seconds')) * 1000);
    peakRss = Math.max(peakRss, treeResidentBytes(pid));
    const loadAfter = loadavg();

    const count = (o: Outcome) => all.filter((r) => r.outcome === o).length;
    const completed = count('completed');
    const refused = count('refused');
    const failed = all.filter((r) => r.outcome === 'failed');
    const accepted = all.length - refused;
    const completedMs = all.filter((r) => r.outcome === 'completed').map((r) => r.ms);
    const refusedMs = all.filter((r) => r.outcome === 'refused').map((r) => r.ms);
    const report = {
      machine: {
        ...describeMachine(),
        loadAverage1mBefore: Number(loadBefore[0]?.toFixed(2)),
        loadAverage1mAfter: Number(loadAfter[0]?.toFixed(2)),
      },
      settings: { size: SIZE, steps: STEPS, seconds: SECONDS, factor: FACTOR, batch: BATCH, maxQueueSize: QUEUE },
      capacityPerSecond: Number(served.toFixed(3)),
      offeredPerSecond: Number(offered.toFixed(3)),
      requests: all.length,
      accepted,
      completed,
      refused,
      failed: failed.length,
      failedStatuses: [...new Set(failed.map((f) => f.status))],
      everyAcceptedCompleted: completed === accepted,
      completedPerSecond: Number((completed / (sendSeconds + drainSeconds)).toFixed(3)),
      drainSeconds: Number(drainSeconds.toFixed(1)),
      latencyMs: {
        completedP50: Math.round(quantile(completedMs, 0.5)),
        completedP99: Math.round(quantile(completedMs, 0.99)),
        refusedP50: Math.round(quantile(refusedMs, 0.5)),
        refusedP99: Math.round(quantile(refusedMs, 0.99)),
      },
      eventLoopLagP99Ms: {
        windows: lagWindows.map((v) => Number(v.toFixed(1))),
        max: Number(Math.max(...lagWindows).toFixed(1)),
        median: Number(quantile(lagWindows, 0.5).toFixed(1)),
      },
      memoryMB: {
        idle: Math.round(idleRss / MB),
        peak: Math.round(peakRss / MB),
        end: Math.round(treeResidentBytes(pid) / MB),
      },
      jobsFailedOnServer: await failedJobs(url),
    };
    const md = `# Overload benchmark

\`npm run bench:overload\`: a real \`fluxql serve\` process (embedded model, MODEL_BATCH=${BATCH}, MAX_QUEUE_SIZE=${QUEUE})
offered ${FACTOR}x its measured capacity, open loop, for ${SECONDS} s over REST (${SIZE}x${SIZE}, ${STEPS} steps).

Machine: ${report.machine.cpu}, ${report.machine.cores} cores, ${report.machine.memoryGiB} GiB, Node ${report.machine.node};
1-minute load average ${report.machine.loadAverage1mBefore} before, ${report.machine.loadAverage1mAfter} after (the machine is shared:
other work running at the same time slows the server and shows in every number below).

| | |
|---|---|
| Capacity (closed loop, ${2 * BATCH} clients) | ${report.capacityPerSecond} req/s |
| Offered | ${report.offeredPerSecond} req/s, ${report.requests} requests |
| Accepted / refused (429 + Retry-After) | ${accepted} / ${refused} |
| Accepted that completed with an image | ${completed} of ${accepted}${report.everyAcceptedCompleted ? ' (all)' : ''} |
| Other failures | ${failed.length}${failed.length ? ` (statuses ${report.failedStatuses.join(', ')})` : ''} |
| Completed per second | ${report.completedPerSecond} |
| Latency completed p50 / p99 | ${report.latencyMs.completedP50} / ${report.latencyMs.completedP99} ms |
| Latency refused p50 / p99 | ${report.latencyMs.refusedP50} / ${report.latencyMs.refusedP99} ms |
| Event-loop lag p99 (per 5 s window) | max ${report.eventLoopLagP99Ms.max} ms, median ${report.eventLoopLagP99Ms.median} ms (goal < 50 ms) |
| Resident memory (process tree) | idle ${report.memoryMB.idle} MB, peak ${report.memoryMB.peak} MB, end ${report.memoryMB.end} MB |
`;
    writeResults(REPO, 'overload', report, md);
    console.log(md);
  } finally {
    proc.kill('SIGKILL');
    rmSync(imageDir, { recursive: true, force: true });
  }
}

await main();
