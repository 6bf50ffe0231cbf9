/**
 * @file `npm run bench:latency`: generation latency of every elastic mode (original, XL, L, M, S) on ONNX Runtime's
 * CPU provider, for the embedded flux-tiny model and the synthetic CPU benchmark configuration (FLUX structure,
 * hidden 768, 4 double + 8 single blocks; bench/lib/synthetic-model.ts).
 *
 * Method (the seed's): batch 1, one fixed prompt and seed, `--warmup` untimed generations per mode (default 5), then
 * the mean of `--runs` timed ones per mode (default 10), each timed with a monotonic clock around the awaited
 * `generate` call (ORT runs are synchronous from JS's view once awaited, so this is synchronized timing). The timed
 * runs go in rounds (every mode once per round, order rotated) so a shared machine's load drifts hit all modes alike. Sizes default to what two CPU cores
 * can do in minutes: 128×128 pixels (64 image tokens), 64 T5 tokens, 8 steps. Engines are compiled (and the planner
 * run) before timing; the first run on a new model takes minutes for that.
 *
 * Writes bench/results/latency.json + latency.md and merges the numbers into bench/results/modes.json.
 *
 *   npm run bench:latency -- [--size 128] [--steps 8] [--text 64] [--warmup 5] [--runs 10] [--only tiny|synthetic]
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stepCacheOf } from '../src/pipeline/flux/step-cache.ts';
import { MODE_NAMES } from '../src/shared/vocabulary/index.ts';
import { MODE_BENCH_OPTIONS, modeBenchSettings, openBenchPipeline } from './lib/bench-pipeline.ts';
import { renderCharts } from './lib/charts.ts';
import {
  benchModels,
  machineInfo,
  meanStd,
  median,
  mergeModes,
  planSummary,
  providerInfo,
  RESULTS_DIR,
} from './lib/modes-report.ts';
import { createProgress } from './lib/progress.ts';

const { values } = parseArgs({
  options: {
    ...MODE_BENCH_OPTIONS,
    warmup: { type: 'string', default: '5' },
    runs: { type: 'string', default: '10' },
  },
});
const { threads, ...sizes } = modeBenchSettings(values);
const settings = {
  ...sizes,
  warmup: Number(values.warmup),
  runs: Number(values.runs),
  batch: 1,
  prompt: 'A photograph of a red fox in a snowy forest at dawn',
  seed: 0,
};
const progress = createProgress();
const log = (m: string) => progress.log(m);

interface Row {
  mode: string;
  meanMs: number;
  medianMs: number;
  /** Median ms of one full-transformer forward (the step's graph without step caching), same rounds method. */
  forwardMs: number;
  stdMs: number;
  minMs: number;
  speedup: number;
  plan: ReturnType<typeof planSummary>;
  stepCache: { threshold: number; fullSteps: number; cachedSteps: number } | null;
}

async function benchModel(label: string, dir: string): Promise<Row[]> {
  log(`[${label}] loading every mode (compiles engines and plans on first use)`);
  const pipe = await openBenchPipeline(dir, {
    modes: [...MODE_NAMES],
    threads,
    onLog: (m) => log(`  ${m}`),
  });
  const rows: Row[] = [];
  // Warm-up and timed generations, then the forward rounds.
  const bar = progress.bar(label, MODE_NAMES.length * (2 * settings.warmup + 2 * settings.runs));
  try {
    const gen = (mode: string) =>
      pipe.generate({
        prompt: settings.prompt,
        height: settings.size,
        width: settings.size,
        steps: settings.steps,
        seed: settings.seed,
        maxSequenceLength: settings.textTokens,
        mode,
      });
    const engines = new Map<string, Awaited<ReturnType<typeof pipe.engine>>>();
    for (const mode of MODE_NAMES) {
      engines.set(mode, await pipe.engine(mode));
      for (let i = 0; i < settings.warmup; i++) {
        await gen(mode);
        bar.tick(`warm-up ${mode}`);
      }
    }
    const before = new Map(
      MODE_NAMES.map((m) => [m, { ...(stepCacheOf(engines.get(m)!)?.stats ?? { full: 0, cached: 0 }) }]),
    );
    // Rounds of every mode, order rotated each round: load from other processes on a shared machine then hits
    // every mode alike instead of whichever mode happened to be running.
    const ms = new Map<string, number[]>(MODE_NAMES.map((m) => [m, []]));
    for (let r = 0; r < settings.runs; r++) {
      for (let k = 0; k < MODE_NAMES.length; k++) {
        const mode = MODE_NAMES[(r + k) % MODE_NAMES.length]!;
        const t0 = performance.now();
        await gen(mode);
        ms.get(mode)!.push(performance.now() - t0);
        bar.tick(`generate ${mode}, round ${r + 1}/${settings.runs}`);
      }
    }
    // One transformer forward per mode, same rounds: isolates the graph from encoders, VAE and step caching.
    const [state] = await pipe.prepare([
      {
        prompt: settings.prompt,
        height: settings.size,
        width: settings.size,
        steps: settings.steps,
        guidanceScale: 3.5,
        seed: 0,
        maxSequenceLength: settings.textTokens,
      },
    ]);
    // Per mode: XL takes the precomputed modulation row instead of timestep/guidance/pooled (computed once here).
    const feeds = new Map<string, Awaited<ReturnType<typeof pipe.transformerFeeds>>>();
    for (const mode of MODE_NAMES) feeds.set(mode, await pipe.transformerFeeds([state!], mode));
    const forward = new Map<string, number[]>(MODE_NAMES.map((m) => [m, []]));
    for (let r = 0; r < settings.warmup + settings.runs; r++) {
      for (let k = 0; k < MODE_NAMES.length; k++) {
        const mode = MODE_NAMES[(r + k) % MODE_NAMES.length]!;
        const t0 = performance.now();
        await engines.get(mode)!.sessions.transformer.run(feeds.get(mode)!);
        if (r >= settings.warmup) forward.get(mode)!.push(performance.now() - t0);
        bar.tick(`transformer forward ${mode}`);
      }
    }
    for (const mode of MODE_NAMES) {
      const engine = engines.get(mode)!;
      const cache = stepCacheOf(engine);
      const b0 = before.get(mode)!;
      const times = ms.get(mode)!;
      const { mean, std } = meanStd(times);
      rows.push({
        mode,
        meanMs: mean,
        medianMs: median(times),
        forwardMs: median(forward.get(mode)!),
        stdMs: std,
        minMs: Math.min(...times),
        speedup: 0,
        plan: planSummary(engine.manifest),
        stepCache: cache
          ? {
              threshold: cache.settings.threshold,
              fullSteps: (cache.stats.full - b0.full) / settings.runs,
              cachedSteps: (cache.stats.cached - b0.cached) / settings.runs,
            }
          : null,
      });
      log(`  ${mode.padEnd(8)} ${mean.toFixed(1).padStart(9)} ms ± ${std.toFixed(1)}`);
    }
  } finally {
    bar.done();
    await pipe.close();
  }
  const base = rows.find((r) => r.mode === 'original')!.meanMs;
  for (const r of rows) r.speedup = base / r.meanMs;
  return rows;
}

const date = new Date().toISOString();
const results: { model: string; rows: Row[] }[] = [];
for (const m of benchModels(values.only)) {
  const rows = await benchModel(m.label, m.dir);
  results.push({ model: m.label, rows });
  mergeModes(
    m.label,
    'latency',
    { ...settings, date },
    Object.fromEntries(
      rows.map((r) => [
        r.mode,
        {
          latencyMs: r.meanMs,
          latencyStdMs: r.stdMs,
          latencyMedianMs: r.medianMs,
          transformerForwardMs: r.forwardMs,
          speedup: r.speedup,
          plan: r.plan,
          stepCache: r.stepCache,
        },
      ]),
    ),
  );
}

const machine = machineInfo();
const provider = providerInfo();
const report = { benchmark: 'latency', date, provider, machine, threads: threads ?? 'ORT default', settings, results };
writeFileSync(join(RESULTS_DIR, 'latency.json'), `${JSON.stringify(report, null, 2)}\n`);
const algs = (p: Row['plan']) =>
  p
    ? Object.entries(p.algorithms)
        .map(([a, n]) => `${a} ${n}`)
        .join(', ')
    : '—';
const md = [
  `# Elastic modes: generation latency (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.os}, Node ${machine.node}.`,
  `Provider: ${provider}; intra-op threads: ${threads ?? 'ORT default'}.`,
  `Method: batch 1, prompt "${settings.prompt}", seed ${settings.seed}, ${settings.size}×${settings.size}, ${settings.steps} steps, ` +
    `${settings.textTokens} T5 tokens; ${settings.warmup} warm-up runs per mode, then mean ± std of ${settings.runs} timed \`generate\` calls per mode, in rotated rounds.`,
  'Chart: charts/latency-per-mode.svg.',
  '',
  ...results.flatMap((r) => [
    `## ${r.model}`,
    '',
    '| mode | mean ms | std ms | median ms | min ms | speed-up (mean) | speed-up (median) | transformer forward ms (median) | plan (layers per algorithm) | measured plan error | step cache (full / cached steps per run) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.mode} | ${x.meanMs.toFixed(1)} | ${x.stdMs.toFixed(1)} | ${x.medianMs.toFixed(1)} | ${x.minMs.toFixed(1)} | ${x.speedup.toFixed(2)}× | ` +
        `${(r.rows[0]!.medianMs / x.medianMs).toFixed(2)}× | ${x.forwardMs.toFixed(1)} | ${algs(x.plan)} | ` +
        `${x.plan ? `${(100 * x.plan.measuredError).toFixed(2)}% (budget ${(100 * x.plan.budget).toFixed(1)}%)` : '—'} | ` +
        `${x.stepCache ? `${x.stepCache.fullSteps.toFixed(1)} / ${x.stepCache.cachedSteps.toFixed(1)} (threshold ${x.stepCache.threshold})` : '—'} |`,
    ),
    '',
  ]),
].join('\n');
writeFileSync(join(RESULTS_DIR, 'latency.md'), md);
await renderCharts(RESULTS_DIR, 'latency.json');
progress.stop();
process.stdout.write(`${md}\n`);
