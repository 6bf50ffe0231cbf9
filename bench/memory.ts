/**
 * @file Memory benchmark (not a test): resident memory of the whole server process tree (API process + engine
 * child) at idle, at its peak during one `POST /v1/images/generations` of 1024x1024 with `n: 4` on the embedded
 * model, and after it (idle again). Samples `/proc` every 20 ms. A watchdog kills the server when the tree passes
 * BENCH_MEM_CAP_GB (default 10), so a build that explodes cannot take the machine down; the row then says so.
 *
 * Run: `node --import tsx bench/memory.ts` (knobs: BENCH_SIZE=1024, BENCH_N=4, BENCH_STEPS=4, BENCH_MEM_CAP_GB,
 * BENCH_LABEL, THREADS, MODEL_REPO). Appends its row to bench/results/memory.json and rewrites memory.md.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { treeCpuSeconds, treeRss } from './lib/process-tree.ts';
import { describeMachine, writeResults } from './lib/results.ts';

const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
const SIZE = Number(process.env.BENCH_SIZE ?? 1024);
const N = Number(process.env.BENCH_N ?? 4);
const STEPS = Number(process.env.BENCH_STEPS ?? 4);
const CAP = Number(process.env.BENCH_MEM_CAP_GB ?? 10) * 2 ** 30;
const LABEL = process.env.BENCH_LABEL ?? 'current';
const GiB = 2 ** 30;

interface Row {
  label: string;
  date: string;
  size: string;
  n: number;
  steps: number;
  idleGiB: number;
  peakGiB: number;
  afterGiB: number;
  /** Peak of the engine child alone. */
  enginePeakGiB: number;
  seconds: number;
  /** CPU seconds the tree spent on the request (wall time depends on what else runs on the machine). */
  cpuSeconds: number;
  status: number | string;
}

async function startServer(imageDir: string): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(process.execPath, [join(REPO, 'bin/fluxql.js'), 'serve'], {
    cwd: REPO,
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', IMAGE_DIR: imageDir, MODEL_BATCH: String(N) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const url = await new Promise<string>((res, rej) => {
    const onData = (c: Buffer) => {
      out += c.toString();
      const m = /at (http\S+) \(GraphQL/.exec(out);
      if (m) res(m[1] as string);
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.once('exit', (code) => rej(new Error(`server exited (${code}) before listening:\n${out}`)));
  });
  return { proc, url };
}

async function main(): Promise<void> {
  const imageDir = await mkdtemp(join(tmpdir(), 'fluxql-mem-'));
  const { proc, url } = await startServer(imageDir);
  const root = proc.pid as number;
  const exited = new Promise((r) => proc.once('exit', r));
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  await sleep(2000);
  const idle = treeRss(root).total;
  let peak = idle;
  let enginePeak = 0;
  let killed = false;
  const timer = setInterval(() => {
    const t = treeRss(root);
    peak = Math.max(peak, t.total);
    for (const [pid, r] of Object.entries(t.byPid)) if (Number(pid) !== root) enginePeak = Math.max(enginePeak, r);
    if (t.total > CAP && !killed) {
      killed = true;
      console.error(`tree RSS ${(t.total / GiB).toFixed(2)} GiB passed the cap: killing the server`);
      proc.kill('SIGKILL');
    }
  }, 20);
  const t0 = performance.now();
  const cpu0 = treeCpuSeconds(root);
  let status: number | string;
  try {
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt: 'a lighthouse on a cliff at dawn',
        size: `${SIZE}x${SIZE}`,
        n: N,
        num_inference_steps: STEPS,
        response_format: 'url',
      }),
    });
    status = res.status;
    await res.text();
  } catch (err) {
    status = killed ? `killed above ${(CAP / GiB).toFixed(0)} GiB` : String(err);
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpuSeconds = killed ? 0 : treeCpuSeconds(root) - cpu0;
  await sleep(3000);
  clearInterval(timer);
  const after = killed ? 0 : treeRss(root).total;
  if (!killed) proc.kill('SIGTERM');
  await exited;
  await rm(imageDir, { recursive: true, force: true });

  const row: Row = {
    label: LABEL,
    date: new Date().toISOString(),
    size: `${SIZE}x${SIZE}`,
    n: N,
    steps: STEPS,
    idleGiB: idle / GiB,
    peakGiB: peak / GiB,
    afterGiB: after / GiB,
    enginePeakGiB: enginePeak / GiB,
    seconds,
    cpuSeconds,
    status,
  };
  console.log(JSON.stringify(row));
  const file = join(REPO, 'bench/results/memory.json');
  const previous = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { rows: Row[] }).rows : [];
  const rows = [...previous.filter((r) => r.label !== LABEL), row];
  const f = (x: number) => x.toFixed(2);
  const md = [
    '# Memory: one 1024x1024 `n: 4` request on the embedded model',
    '',
    'Resident memory (VmRSS) of the whole server process tree (API process + ONNX engine child), sampled from',
    '`/proc` every 20 ms by `bench/memory.ts`: idle before, peak during the request, and 3 s after it. Wall seconds',
    "depend on what else ran on the machine (a shared 2-core box); CPU s is the tree's user + system time.",
    '',
    '| build | size | n | steps | idle GiB | peak GiB | engine peak GiB | after GiB | seconds | CPU s | HTTP |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.label} | ${r.size} | ${r.n} | ${r.steps} | ${f(r.idleGiB)} | ${f(r.peakGiB)} | ${f(r.enginePeakGiB)} | ${f(r.afterGiB)} | ${r.seconds.toFixed(1)} | ${r.cpuSeconds?.toFixed(1) ?? '-'} | ${r.status} |`,
    ),
    '',
    `Machine: ${JSON.stringify(describeMachine())}`,
    '',
  ].join('\n');
  writeResults(REPO, 'memory', { machine: describeMachine(), rows }, md);
}

await main();
