/**
 * @file The quality rows of the CUDA engine's modes on flux-mini (issue 15), from what `cuda-quality.py` brought back
 * from the GPU machine: per mode the deterministic detector's prompt accuracy and the PSNR / SSIM against the same
 * engine's `original`, with the metric code of `npm run bench:quality` (src/shared/caption-grammar/detector.ts,
 * src/shared/image-metrics.ts), and per step-cache threshold the cached-step pattern flux-mini yields: the pattern
 * the synthetic-size timing replays (`device-modes.sh` PATTERN=...). Writes <prefix>.json and <prefix>.md.
 * Metrics are on the engine's 8-bit images (bench:quality's ORT rows use the decoder's float output; the rounding
 * moves PSNR only above ~50 dB).
 *   node --import tsx engines/cuda/scripts/cuda-quality-report.ts <dir> bench/results/cuda-quality-flux-mini-h100
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ATTRIBUTES, accuracy, detect, judgeDetection } from '../../../src/shared/caption-grammar/detector.ts';
import { type CaptionAttributes, caption, sampleCaptions } from '../../../src/shared/caption-grammar/grammar.ts';
import { psnr, ssim } from '../../../src/shared/image-metrics.ts';

interface RunMode {
  mode: string;
  plan: string | null;
  threshold: number | null;
  /** The step cache's most cached steps in a row (absent in runs before the sweep existed: 1). */
  max_consecutive?: number | null;
  seconds: number;
  file: string;
  jobs: { samples: number[]; pattern: string }[];
  full_steps_mean: number;
  most_common_pattern: string;
}
interface Run {
  card: string;
  model: string;
  prompts: string[];
  seeds: number[];
  height: number;
  width: number;
  steps: number;
  guidance: number;
  t5_len: number;
  batch: number;
  /** The engine's loaded plans (`loaded.plans`). */
  plans?: { name: string }[];
  modes: RunMode[];
}

const [dirArg, prefix] = process.argv.slice(2);
if (!dirArg || !prefix) throw new Error('usage: cuda-quality-report.ts <dir with quality-run.json> <out prefix>');
const dir: string = dirArg;
const run = JSON.parse(readFileSync(join(dir, 'quality-run.json'), 'utf8')) as Run;
const { height: H, width: W } = run;
const N = run.prompts.length;

// The prompts' attributes: bench:quality's set (prompt seed 14), checked caption by caption.
const asked: CaptionAttributes[] = sampleCaptions(N, 14);
asked.forEach((a, i) => {
  if (caption(a) !== run.prompts[i]) throw new Error(`prompt ${i} is not bench:quality's: ${run.prompts[i]}`);
});

/** A mode's images: RGB8 [H, W, 3] each, prompt order. */
function images(m: RunMode): Uint8Array[] {
  const all = gunzipSync(readFileSync(join(dir, m.file)));
  const per = H * W * 3;
  if (all.length !== N * per) throw new Error(`${m.file}: ${all.length} bytes, expected ${N} x ${per}`);
  return Array.from({ length: N }, (_, i) => new Uint8Array(all.buffer, all.byteOffset + i * per, per));
}

/** [3, H, W] in [0, 1] from RGB8 [H, W, 3]: the layout image-metrics' ssim takes. */
function planar(rgb: Uint8Array): Float32Array {
  const out = new Float32Array(3 * H * W);
  for (let p = 0; p < H * W; p++) for (let c = 0; c < 3; c++) out[c * H * W + p] = rgb[p * 3 + c]! / 255;
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const reference = run.modes.find((m) => m.mode === 'original');
if (!reference) throw new Error('quality-run.json has no original mode');
const ref = images(reference).map(planar);
const rows = run.modes.map((m) => {
  const imgs = images(m);
  const judged = imgs.map((data, i) => judgeDetection(detect({ width: W, height: H, data }), asked[i]!));
  const acc = accuracy(judged);
  const floats = imgs.map(planar);
  return {
    mode: m.mode,
    plan: m.plan,
    threshold: m.threshold,
    maxConsecutive: m.threshold === null ? null : (m.max_consecutive ?? 1),
    accuracy: Object.fromEntries(ATTRIBUTES.flatMap((a) => (acc[a] ? [[a, acc[a].accuracy]] : []))),
    // Identical images have infinite PSNR; capped at 100 dB as bench:quality does.
    psnr: mean(floats.map((x, i) => Math.min(100, psnr(x, ref[i]!)))),
    ssim: mean(floats.map((x, i) => ssim(x, ref[i]!, 3, H, W))),
    fullStepsMean: m.full_steps_mean,
    cachedStepsMean: run.steps - m.full_steps_mean,
    pattern: m.threshold === null ? null : m.most_common_pattern,
    patterns: m.threshold === null ? null : [...new Set(m.jobs.map((j) => j.pattern))].length,
  };
});

const method =
  `${N} bench:quality grammar prompts (prompt seed 14, image i with seed 1000 + i), ${H}x${W}, ${run.steps} steps, ` +
  `guidance ${run.guidance}, T5 length ${run.t5_len}, batch ${run.batch}; one bf16 engine with plans ` +
  `${(run.plans ?? [{ name: 'fp8' }]).map((p) => p.name).join(', ')} (presets of the same names)` +
  ` (engines/cuda/scripts/cuda-quality.py); accuracy by the deterministic detector, PSNR (capped at 100 dB) and SSIM` +
  " against the same engine's original on its 8-bit images; S+cache: step caching (warm-up 1, at most the" +
  " row's 'in a row' cached steps in a row) at the threshold shown, pattern = the most common per-job F/C sequence.";
writeFileSync(`${prefix}.json`, `${JSON.stringify({ card: run.card, model: run.model, method, rows }, null, 2)}\n`);
const pct = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(1)} %`);
const md = [
  `# CUDA engine modes on ${run.model}: quality (${run.card})`,
  '',
  method,
  '',
  `| mode | plan | threshold | in a row | ${ATTRIBUTES.join(' | ')} | PSNR dB | SSIM | full steps (mean) | pattern |`,
  `|---|---|---|---|${ATTRIBUTES.map(() => '---').join('|')}|---|---|---|---|`,
  ...rows.map(
    (r) =>
      `| ${r.mode} | ${r.plan ?? 'base'} | ${r.threshold ?? '-'} | ${r.maxConsecutive ?? '-'} | ${ATTRIBUTES.map((a) => pct(r.accuracy[a])).join(' | ')} | ` +
      `${r.psnr.toFixed(2)} | ${r.ssim.toFixed(4)} | ${r.fullStepsMean.toFixed(1)} | ${r.pattern ? `\`${r.pattern}\`` : '-'} |`,
  ),
  '',
];
writeFileSync(`${prefix}.md`, md.join('\n'));
console.log(md.join('\n'));
