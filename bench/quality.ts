/**
 * @file `npm run bench:quality`: PSNR and SSIM of every elastic mode's images against the `original` mode's, on a
 * fixed subset of PartiPrompts (bench/data/partiprompts-subset.tsv: the first two prompts of each of the 12
 * categories of PartiPrompts.tsv (google-research/parti), in file order), same seed per prompt (1000 + its index) in every
 * mode. Reports per-category and overall means, and plots latency against PSNR.
 *
 * Defaults for two CPU cores: 128×128 pixels, 8 steps, 64 T5 tokens; all 24 prompts on flux-tiny and the first prompt
 * of each category (12) on the synthetic benchmark model (`--per-category` overrides both).
 *
 * Writes bench/results/quality.json, quality.md, charts/quality-vs-latency.svg and merges the means into bench/results/modes.json.
 *
 *   npm run bench:quality -- [--size 128] [--steps 8] [--text 64] [--per-category N] [--only tiny|synthetic]
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { psnr, ssim } from '../src/shared/image-metrics.ts';
import { MODE_NAMES } from '../src/shared/vocabulary/index.ts';
import { MODE_BENCH_OPTIONS, modeBenchSettings, openBenchPipeline } from './lib/bench-pipeline.ts';
import { renderCharts } from './lib/charts.ts';
import { benchModels, machineInfo, mergeModes, providerInfo, RESULTS_DIR } from './lib/modes-report.ts';
import { type PartiPrompt, perCategory, readPartiPrompts, renderPartiPrompt } from './lib/parti-prompts.ts';
import { createProgress } from './lib/progress.ts';

const { values } = parseArgs({ options: { ...MODE_BENCH_OPTIONS, 'per-category': { type: 'string' } } });
const { size, steps, textTokens, threads } = modeBenchSettings(values);
const progress = createProgress();
const log = (m: string) => progress.log(m);

interface ModeQuality {
  mode: string;
  psnr: number;
  ssim: number;
  meanMs: number;
  byCategory: Record<string, { psnr: number; ssim: number; n: number }>;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function benchModel(label: string, dir: string, prompts: PartiPrompt[]): Promise<ModeQuality[]> {
  const pipe = await openBenchPipeline(dir, {
    modes: [...MODE_NAMES],
    threads,
    onLog: (m) => log(`  ${m}`),
  });
  const rows: ModeQuality[] = [];
  const bar = progress.bar(label, MODE_NAMES.length * prompts.length);
  try {
    const images = new Map<string, { image: Float32Array; ms: number }[]>();
    for (const mode of MODE_NAMES) {
      const out: { image: Float32Array; ms: number }[] = [];
      for (const p of prompts) {
        const { result, ms } = await renderPartiPrompt(pipe, p, mode, { size, steps, textTokens });
        out.push({ image: result.floatImages[0]!, ms });
        bar.tick(`${mode}: ${p.category}`);
      }
      images.set(mode, out);
    }
    const ref = images.get('original')!;
    for (const mode of MODE_NAMES) {
      const imgs = images.get(mode)!;
      // Identical images have infinite PSNR; cap at 100 dB so means stay finite (XL sits far above 45 either way).
      const ps = imgs.map((x, i) => Math.min(100, psnr(x.image, ref[i]!.image)));
      const ss = imgs.map((x, i) => ssim(x.image, ref[i]!.image, 3, size, size));
      const byCategory: ModeQuality['byCategory'] = {};
      for (const cat of new Set(prompts.map((p) => p.category))) {
        const idx = prompts.flatMap((p, i) => (p.category === cat ? [i] : []));
        byCategory[cat] = { psnr: mean(idx.map((i) => ps[i]!)), ssim: mean(idx.map((i) => ss[i]!)), n: idx.length };
      }
      rows.push({ mode, psnr: mean(ps), ssim: mean(ss), meanMs: mean(imgs.map((x) => x.ms)), byCategory });
    }
  } finally {
    bar.done();
    await pipe.close();
  }
  return rows;
}

const date = new Date().toISOString();
const all = readPartiPrompts();
const results: { model: string; prompts: number; rows: ModeQuality[] }[] = [];
for (const m of benchModels(values.only)) {
  const n = values['per-category'] ? Number(values['per-category']) : m.label === 'flux-tiny' ? 2 : 1;
  const prompts = perCategory(all, n);
  const rows = await benchModel(m.label, m.dir, prompts);
  results.push({ model: m.label, prompts: prompts.length, rows });
  mergeModes(
    m.label,
    'quality',
    { size, steps, textTokens, prompts: prompts.length, date },
    Object.fromEntries(rows.map((r) => [r.mode, { psnr: r.psnr, ssim: r.ssim }])),
  );
}

const machine = machineInfo();
const provider = providerInfo();
writeFileSync(
  join(RESULTS_DIR, 'quality.json'),
  `${JSON.stringify({ benchmark: 'quality', date, provider, machine, settings: { size, steps, textTokens }, results }, null, 2)}\n`,
);
const cats = [...new Set(all.map((p) => p.category))];
const md = [
  `# Elastic modes: quality against original (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}; ${provider}.`,
  `Method: PartiPrompts subset (bench/data/partiprompts-subset.tsv), seed 1000 + prompt index, ${size}×${size}, ${steps} steps, ` +
    `${textTokens} T5 tokens; PSNR (capped at 100 dB) and SSIM (11×11 Gaussian, σ 1.5) of each mode's image against original's.`,
  'Chart: charts/quality-vs-latency.svg (latency here is the mean per-image time of this run, not the latency benchmark).',
  '',
  ...results.flatMap((r) => [
    `## ${r.model} (${r.prompts} prompts)`,
    '',
    '| mode | PSNR dB | SSIM | mean ms / image |',
    '| --- | ---: | ---: | ---: |',
    ...r.rows.map((x) => `| ${x.mode} | ${x.psnr.toFixed(2)} | ${x.ssim.toFixed(4)} | ${x.meanMs.toFixed(0)} |`),
    '',
    `Per category (PSNR dB / SSIM):`,
    '',
    `| category | ${r.rows.map((x) => x.mode).join(' | ')} |`,
    `| --- | ${r.rows.map(() => '---:').join(' | ')} |`,
    ...cats
      .filter((c) => r.rows[0]!.byCategory[c])
      .map(
        (c) =>
          `| ${c} | ${r.rows.map((x) => `${x.byCategory[c]!.psnr.toFixed(1)} / ${x.byCategory[c]!.ssim.toFixed(3)}`).join(' | ')} |`,
      ),
    '',
  ]),
].join('\n');
writeFileSync(join(RESULTS_DIR, 'quality.md'), md);
await renderCharts(RESULTS_DIR, 'quality.json');
progress.stop();
process.stdout.write(`${md}\n`);
