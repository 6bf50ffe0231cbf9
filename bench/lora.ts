/**
 * @file `npm run bench:lora`: LoRA latency on ONNX Runtime's CPU provider, for the embedded flux-tiny model and the
 * synthetic FLUX-structured model of bench/lib/synthetic-model.ts (hidden 768, 4 double + 8 single blocks).
 *
 * Per mode: one transformer step (`FluxPipeline.step`) on the LoRA-free engine, then on the LoRA engine with a
 * LoRA of rank 4, 32 and 256 on every Linear of the transformer (the worst case: real LoRAs usually target fewer
 * layers); overhead = LoRA step / base step − 1. Switching: the time `FluxPipeline.loraFeeds` takes to make a set
 * ready (cold: parse + validate + build feeds; warm: switching back to a recent set), with the number of ORT
 * sessions created while switching (must be 0).
 *
 * Method: one warm-up, then the mean (min) of `--repeats` timed runs with a monotonic clock. Writes JSON + Markdown
 * to bench/results/lora.{json,md}.
 *
 *   npm run bench:lora -- [--size 256] [--text 128] [--repeats 5] [--ranks 4,32,256] [--modes original,XL] [--only tiny|synthetic]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loraModelSpec } from '../src/pipeline/lora/model-layers.ts';
import type { FluxTransformerConfig } from '../src/shared/vocabulary/transformer-config.ts';
import { type TensorInput, writeSafetensors } from '../src/shared/weights/index.ts';
import { openBenchPipeline } from './lib/bench-pipeline.ts';
import { createProgress } from './lib/progress.ts';
import { describeMachine, writeResults } from './lib/results.ts';
import { BENCH_CPU_CONFIG, writeSyntheticModel } from './lib/synthetic-model.ts';

const REPO = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '256' },
    text: { type: 'string', default: '128' },
    repeats: { type: 'string', default: '5' },
    ranks: { type: 'string', default: '4,32,256' },
    modes: { type: 'string', default: 'original,XL' },
    only: { type: 'string' },
  },
});
const SIZE = Number(values.size);
const TEXT = Number(values.text);
const REPEATS = Number(values.repeats);
const RANKS = values.ranks.split(',').map(Number);
const MODES = values.modes.split(',');
const progress = createProgress();

interface Timing {
  meanMs: number;
  minMs: number;
}

async function time(fn: () => Promise<unknown>, repeats = REPEATS): Promise<Timing> {
  await fn(); // warm-up: first-run allocations and ORT's lazy initialisation stay out of the numbers
  const ms: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return { meanMs: ms.reduce((a, b) => a + b, 0) / ms.length, minMs: Math.min(...ms) };
}

/** A diffusers-format LoRA of `rank` on every Linear of the model (values small: latency does not depend on them). */
function writeFullLora(path: string, config: FluxTransformerConfig, rank: number, seed: number): void {
  let s = seed >>> 0;
  const rand = (n: number, amp: number) =>
    Float32Array.from({ length: n }, () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return (s / 2 ** 32 - 0.5) * amp;
    });
  const tensors: Record<string, TensorInput> = {};
  for (const [m, { inFeatures, outFeatures }] of loraModelSpec(config).linears) {
    tensors[`transformer.${m}.lora_A.weight`] = {
      dtype: 'F32',
      shape: [rank, inFeatures],
      data: rand(rank * inFeatures, 0.02),
    };
    tensors[`transformer.${m}.lora_B.weight`] = {
      dtype: 'F32',
      shape: [outFeatures, rank],
      data: rand(outFeatures * rank, 0.02),
    };
  }
  writeSafetensors(path, tensors);
}

interface ModeResult {
  mode: string;
  baseStep: Timing;
  ranks: { rank: number; step: Timing; overheadPct: number }[];
  switchColdMs: number;
  switchWarmMs: Timing;
  sessionsCreatedWhileSwitching: number;
}

async function benchModel(
  label: string,
  modelDir: string,
  repeats: number,
): Promise<{ label: string; results: ModeResult[] }> {
  const config = JSON.parse(readFileSync(join(modelDir, 'transformer/config.json'), 'utf8')) as FluxTransformerConfig;
  const loraDir = mkdtempSync(join(tmpdir(), 'fluxql-bench-lora-'));
  try {
    for (const r of RANKS) writeFullLora(join(loraDir, `rank${r}.safetensors`), config, r, r);
    for (const n of ['a', 'b', 'c'])
      writeFullLora(join(loraDir, `switch_${n}.safetensors`), config, 32, n.charCodeAt(0));
    progress.log(`[${label}] loading ${modelDir} (compiles engines on first use)`);
    const pipe = await openBenchPipeline(modelDir, {
      loraDir,
      modes: [],
      onLog: (m) => progress.log(`  ${m}`),
    });
    const request = (loras: { name: string; strength: number }[]) => ({
      prompt: 'A photograph of a red fox in a snowy forest at dawn',
      height: SIZE,
      width: SIZE,
      steps: 1000,
      guidanceScale: 3.5,
      seed: 0,
      maxSequenceLength: TEXT,
      loras,
    });
    const results: ModeResult[] = [];
    // Per mode: one warm-up step and `repeats` timed steps per variant (base and each rank).
    const bar = progress.bar(label, MODES.length * (RANKS.length + 1) * (repeats + 1));
    for (const mode of MODES) {
      // Base and every rank are timed in interleaved rounds, so load from other processes on the machine hits all
      // variants alike; overhead compares the minima (the least disturbed runs).
      const variants = [{ rank: 0, name: '' }, ...RANKS.map((rank) => ({ rank, name: `rank${rank}` }))];
      const states = [];
      for (const v of variants) {
        const [s] = await pipe.prepare([{ ...request(v.name ? [{ name: v.name, strength: 1 }] : []), mode }]);
        await pipe.step([s!]); // warm-up
        states.push(s!);
        bar.tick(`${mode} warm-up ${v.name || 'base'}`);
      }
      const ms: number[][] = variants.map(() => []);
      for (let round = 0; round < repeats; round++) {
        for (const [i, s] of states.entries()) {
          const t0 = performance.now();
          await pipe.step([s]);
          ms[i]!.push(performance.now() - t0);
          bar.tick(`${mode} round ${round + 1}/${repeats}`);
        }
      }
      const timing = (xs: number[]): Timing => ({
        meanMs: xs.reduce((a, b) => a + b, 0) / xs.length,
        minMs: Math.min(...xs),
      });
      const baseStep = timing(ms[0]!);
      const ranks = RANKS.map((rank, i) => {
        const step = timing(ms[i + 1]!);
        return { rank, step, overheadPct: (step.minMs / baseStep.minMs - 1) * 100 };
      });
      // Switching: the LoRA engine is loaded by now; a switch must only build (or reuse) host arrays.
      const sessions = pipe.sessionsCreated;
      await pipe.loraFeeds(mode, [{ name: 'switch_a', strength: 1 }]);
      const t0 = performance.now();
      await pipe.loraFeeds(mode, [{ name: 'switch_b', strength: 0.7 }]); // first use of switch_b: parse + feeds
      const switchColdMs = performance.now() - t0;
      let flip = false;
      const switchWarmMs = await time(async () => {
        flip = !flip;
        await pipe.loraFeeds(mode, [{ name: flip ? 'switch_a' : 'switch_b', strength: flip ? 1 : 0.7 }]);
      }, 20);
      results.push({
        mode,
        baseStep,
        ranks,
        switchColdMs,
        switchWarmMs,
        sessionsCreatedWhileSwitching: pipe.sessionsCreated - sessions,
      });
    }
    bar.done();
    await pipe.close();
    return { label, results };
  } finally {
    rmSync(loraDir, { recursive: true, force: true });
  }
}

const models = [];
if (values.only !== 'synthetic')
  models.push(await benchModel('flux-tiny (embedded)', join(REPO, 'models/flux-tiny'), Math.max(REPEATS, 20)));
if (values.only !== 'tiny') {
  const dir = join(REPO, '.cache/synthetic', BENCH_CPU_CONFIG.name);
  writeSyntheticModel(dir, BENCH_CPU_CONFIG, join(REPO, 'models/flux-tiny'));
  models.push(await benchModel(`synthetic ${BENCH_CPU_CONFIG.name}`, dir, REPEATS));
}

const machine = describeMachine();
const date = new Date().toISOString();
const report = {
  benchmark: 'lora',
  date,
  provider: 'onnxruntime-node cpu',
  size: SIZE,
  textLen: TEXT,
  repeats: REPEATS,
  machine,
  models,
};
const f = (n: number) => n.toFixed(1);
const md = [
  `# LoRA latency on the CPU (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}; ONNX Runtime CPU provider, float32.`,
  `One transformer step at ${SIZE}x${SIZE} with ${TEXT} text tokens; one warm-up each, then ${REPEATS} interleaved rounds (at least 20`,
  'on flux-tiny, whose steps take milliseconds) of base and every rank; mean (min). Overhead compares the minima. The LoRA',
  'targets every Linear of the transformer.',
  'Base = the LoRA-free engine (what runs when no LoRA is active). Switch cold = first use of a LoRA (parse, validate,',
  'build feeds); warm = switching back to a recent set (cached feeds). Sessions created = ORT sessions made while switching.',
  '',
  ...models.flatMap((m) => [
    `## ${m.label}`,
    '',
    `| mode | base step ms mean (min) | ${RANKS.map((r) => `rank ${r} ms mean (min) overhead`).join(' | ')} | switch cold ms | switch warm ms | sessions created |`,
    `| --- | ---: | ${RANKS.map(() => '---:').join(' | ')} | ---: | ---: | ---: |`,
    ...m.results.map(
      (r) =>
        `| ${r.mode} | ${f(r.baseStep.meanMs)} (${f(r.baseStep.minMs)}) | ${r.ranks
          .map((x) => `${f(x.step.meanMs)} (${f(x.step.minMs)}) ${x.overheadPct >= 0 ? '+' : ''}${f(x.overheadPct)}%`)
          .join(
            ' | ',
          )} | ${f(r.switchColdMs)} | ${r.switchWarmMs.meanMs.toFixed(3)} | ${r.sessionsCreatedWhileSwitching} |`,
    ),
    '',
  ]),
].join('\n');
writeResults(REPO, 'lora', report, md);
progress.stop();
process.stdout.write(`${md}\n`);
