/**
 * @file `npm run bench:grid`: the image grid per elastic mode: the same prompts and seeds (1000 + prompt index, as
 * `bench:quality`) generated in every mode, one row per prompt and one column per mode, so the modes' differences
 * can be seen. Prompts: the first of each of the first `--prompts` categories of bench/data/partiprompts-subset.tsv.
 *
 * Writes bench/results/charts/grid-<model>.webp, and grid.json + grid.md (prompts, seeds, per-image time) under
 * bench/results/.
 *
 *   npm run bench:grid -- [--size 128] [--steps 8] [--text 64] [--prompts 4] [--threads N] [--only tiny|synthetic]
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { MODE_NAMES } from '../src/shared/vocabulary/index.ts';
import { MODE_BENCH_OPTIONS, modeBenchSettings, openBenchPipeline } from './lib/bench-pipeline.ts';
import { imageGridPng } from './lib/image-grid.ts';
import { benchModels, machineInfo, providerInfo, REPO, RESULTS_DIR } from './lib/modes-report.ts';
import { perCategory, readPartiPrompts, renderPartiPrompt } from './lib/parti-prompts.ts';
import { createProgress } from './lib/progress.ts';
import { writeResults } from './lib/results.ts';

const { values } = parseArgs({ options: { ...MODE_BENCH_OPTIONS, prompts: { type: 'string', default: '4' } } });
const { size, steps, textTokens, threads } = modeBenchSettings(values);
const progress = createProgress();

// The first prompt of each of the first `--prompts` categories.
const prompts = perCategory(readPartiPrompts(), 1).slice(0, Number(values.prompts));
const chartsDir = join(RESULTS_DIR, 'charts');
mkdirSync(chartsDir, { recursive: true });
const date = new Date().toISOString();
const results: { model: string; file: string; meanMsByMode: Record<string, number> }[] = [];
for (const m of benchModels(values.only)) {
  progress.log(`[${m.label}] loading every mode (compiles engines and plans on first use)`);
  const pipe = await openBenchPipeline(m.dir, {
    modes: [...MODE_NAMES],
    threads,
    onLog: (x) => progress.log(`  ${x}`),
  });
  const bar = progress.bar(m.label, prompts.length * MODE_NAMES.length);
  const cells: Uint8Array[][] = prompts.map(() => []);
  const ms: Record<string, number[]> = Object.fromEntries(MODE_NAMES.map((mode) => [mode, []]));
  try {
    for (const [r, p] of prompts.entries()) {
      for (const mode of MODE_NAMES) {
        const { result, ms: took } = await renderPartiPrompt(pipe, p, mode, { size, steps, textTokens });
        ms[mode]?.push(took);
        const image = result.images[0];
        if (!image) throw new Error(`no image for ${mode}`);
        cells[r]?.push(image.data);
        bar.tick(`${p.category}: ${mode}`);
      }
    }
  } finally {
    bar.done();
    await pipe.close();
  }
  const file = `charts/grid-${m.label}.webp`;
  const png = await imageGridPng(
    prompts.map((p, r) => ({
      label: `${p.category} (seed ${1000 + p.index})`,
      images: (cells[r] ?? []).map((data) => ({ width: size, height: size, data })),
    })),
    size,
    190,
    { title: `${m.label}: ${size}×${size}, ${steps} steps, same seed per row`, columns: MODE_NAMES, labelSize: 12 },
  );
  // Lossy WebP: noise-like images (random-weight models) do not compress losslessly (about 3 MB as PNG).
  await sharp(png).webp({ quality: 85 }).toFile(join(RESULTS_DIR, file));
  const meanMsByMode = Object.fromEntries(
    Object.entries(ms).map(([mode, xs]) => [mode, xs.reduce((a, b) => a + b, 0) / xs.length]),
  );
  results.push({ model: m.label, file, meanMsByMode });
}

const machine = machineInfo();
const provider = providerInfo();
const md = [
  `# Image grid per elastic mode (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}; ${provider}.`,
  `Method: ${size}×${size}, ${steps} steps, ${textTokens} T5 tokens; each row one prompt with seed 1000 + its index in ` +
    'bench/data/partiprompts-subset.tsv, each column one mode.',
  '',
  '| category | prompt | seed |',
  '| --- | --- | ---: |',
  ...prompts.map((p) => `| ${p.category} | ${p.prompt.replace(/\|/g, '\\|')} | ${1000 + p.index} |`),
  '',
  ...results.flatMap((r) => [
    `## ${r.model}`,
    '',
    `![${r.model} grid](${r.file})`,
    '',
    `Mean ms per image: ${MODE_NAMES.map((mode) => `${mode} ${r.meanMsByMode[mode]?.toFixed(0)}`).join(', ')}.`,
    '',
  ]),
].join('\n');
writeResults(
  REPO,
  'grid',
  { benchmark: 'grid', date, provider, machine, settings: { size, steps, textTokens, threads }, prompts, results },
  md,
);
progress.stop();
process.stdout.write(`${md}\n`);
