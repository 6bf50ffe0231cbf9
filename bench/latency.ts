/**
 * @file `npm run bench:latency`: generation latency of every elastic mode (original, XL, L, M, S) on ONNX Runtime's
 * CPU provider, for the embedded flux-tiny model and the synthetic CPU benchmark configuration (FLUX structure,
 * hidden 768, 4 double + 8 single blocks; bench/lib/synthetic-model.ts).
 *
 * Method (the seed's): batch 1, one fixed prompt and seed, `--warmup` untimed generations (default 5), then the mean
 * of `--runs` timed ones (default 10), each timed with a monotonic clock around the awaited `generate` call (ORT runs
 * are synchronous from JS's view once awaited, so this is synchronized timing). Sizes default to what two CPU cores
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
import { FluxPipeline } from '../src/pipeline/flux/pipeline.ts';
import { stepCacheOf } from '../src/pipeline/flux/step-cache.ts';
import {
  BENCH_MODES,
  benchModels,
  machineInfo,
  meanStd,
  mergeModes,
  planSummary,
  providerInfo,
  RESULTS_DIR,
} from './lib/modes-report.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '128' },
    steps: { type: 'string', default: '8' },
    text: { type: 'string', default: '64' },
    warmup: { type: 'string', default: '5' },
    runs: { type: 'string', default: '10' },
    threads: { type: 'string' },
    only: { type: 'string' },
  },
});
const settings = {
  size: Number(values.size),
  steps: Number(values.steps),
  textTokens: Number(values.text),
  warmup: Number(values.warmup),
  runs: Number(values.runs),
  batch: 1,
  prompt: 'A photograph of a red fox in a snowy forest at dawn',
  seed: 0,
};
const threads = values.threads ? Number(values.threads) : undefined;
const log = (m: string) => process.stderr.write(`${m}\n`);

interface Row {
  mode: string;
  meanMs: number;
  stdMs: number;
  minMs: number;
  speedup: number;
  plan: ReturnType<typeof planSummary>;
  stepCache: { threshold: number; fullSteps: number; cachedSteps: number } | null;
}

async function benchModel(label: string, dir: string): Promise<Row[]> {
  log(`[${label}] loading every mode (compiles engines and plans on first use)`);
  const pipe = await FluxPipeline.fromPretrained(dir, { modes: [...BENCH_MODES], threads, onLog: (m) => log(`  ${m}`) });
  const rows: Row[] = [];
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
    for (const mode of BENCH_MODES) {
      const engine = await pipe.engine(mode);
      for (let i = 0; i < settings.warmup; i++) await gen(mode);
      const cache = stepCacheOf(engine);
      const before = cache ? { ...cache.stats } : undefined;
      const ms: number[] = [];
      for (let i = 0; i < settings.runs; i++) {
        const t0 = performance.now();
        await gen(mode);
        ms.push(performance.now() - t0);
      }
      const { mean, std } = meanStd(ms);
      rows.push({
        mode,
        meanMs: mean,
        stdMs: std,
        minMs: Math.min(...ms),
        speedup: 0,
        plan: planSummary(engine.manifest),
        stepCache:
          cache && before
            ? {
                threshold: cache.settings.threshold,
                fullSteps: (cache.stats.full - before.full) / settings.runs,
                cachedSteps: (cache.stats.cached - before.cached) / settings.runs,
              }
            : null,
      });
      log(`  ${mode.padEnd(8)} ${mean.toFixed(1).padStart(9)} ms ± ${std.toFixed(1)}`);
    }
  } finally {
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
        { latencyMs: r.meanMs, latencyStdMs: r.stdMs, speedup: r.speedup, plan: r.plan, stepCache: r.stepCache },
      ]),
    ),
  );
}

const machine = machineInfo();
const provider = providerInfo();
const report = { benchmark: 'latency', date, provider, machine, threads: threads ?? 'ORT default', settings, results };
writeFileSync(join(RESULTS_DIR, 'latency.json'), `${JSON.stringify(report, null, 2)}\n`);
const algs = (p: Row['plan']) =>
  p ? Object.entries(p.algorithms).map(([a, n]) => `${a} ${n}`).join(', ') : '—';
const md = [
  `# Elastic modes: generation latency (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.os}, Node ${machine.node}.`,
  `Provider: ${provider}; intra-op threads: ${threads ?? 'ORT default'}.`,
  `Method: batch 1, prompt "${settings.prompt}", seed ${settings.seed}, ${settings.size}×${settings.size}, ${settings.steps} steps, ` +
    `${settings.textTokens} T5 tokens; ${settings.warmup} warm-up runs, then mean ± std of ${settings.runs} timed \`generate\` calls.`,
  '',
  ...results.flatMap((r) => [
    `## ${r.model}`,
    '',
    '| mode | mean ms | std ms | min ms | speed-up vs original | plan (layers per algorithm) | measured plan error | step cache (full / cached steps per run) |',
    '| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.mode} | ${x.meanMs.toFixed(1)} | ${x.stdMs.toFixed(1)} | ${x.minMs.toFixed(1)} | ${x.speedup.toFixed(2)}× | ${algs(x.plan)} | ` +
        `${x.plan ? `${(100 * x.plan.measuredError).toFixed(2)}% (budget ${(100 * x.plan.budget).toFixed(1)}%)` : '—'} | ` +
        `${x.stepCache ? `${x.stepCache.fullSteps.toFixed(1)} / ${x.stepCache.cachedSteps.toFixed(1)} (threshold ${x.stepCache.threshold})` : '—'} |`,
    ),
    '',
  ]),
].join('\n');
writeFileSync(join(RESULTS_DIR, 'latency.md'), md);
process.stdout.write(`${md}\n`);
