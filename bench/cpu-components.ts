/**
 * @file `npm run bench:cpu`: per-component CPU time of a generation (tokenizers, CLIP, T5, one transformer step,
 * VAE decode, whole generation) on ONNX Runtime's CPU provider, for the embedded flux-tiny model and for a larger
 * synthetic model of FLUX structure (hidden 768, 4 double + 8 single blocks; see bench/lib/synthetic-model.ts).
 *
 * Method: each component is warmed up once, then timed `REPEATS` times with a monotonic clock around the awaited
 * ORT run; the table shows the mean and min. Writes JSON + Markdown under bench/results/.
 *
 *   npm run bench:cpu -- [--size 512] [--steps 4] [--repeats 3] [--only tiny|synthetic]
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openBenchPipeline } from './lib/bench-pipeline.ts';
import { createProgress } from './lib/progress.ts';
import { describeMachine, writeResults } from './lib/results.ts';
import { BENCH_CPU_CONFIG, writeSyntheticModel } from './lib/synthetic-model.ts';

const REPO = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '512' },
    steps: { type: 'string', default: '4' },
    repeats: { type: 'string', default: '3' },
    only: { type: 'string' },
  },
});
const SIZE = Number(values.size);
const STEPS = Number(values.steps);
const REPEATS = Number(values.repeats);

const progress = createProgress();
/** Components timed per model (the `time` calls in {@link benchModel}). */
const COMPONENTS = 6;

interface Timing {
  component: string;
  meanMs: number;
  minMs: number;
}

async function timeComponent(component: string, fn: () => Promise<unknown>): Promise<Timing> {
  await fn(); // warm-up: first-run allocations and ORT's lazy initialisation stay out of the numbers
  const ms: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return { component, meanMs: ms.reduce((a, b) => a + b, 0) / ms.length, minMs: Math.min(...ms) };
}

async function benchModel(
  label: string,
  modelDir: string,
): Promise<{ label: string; modelDir: string; timings: Timing[] }> {
  progress.log(`[${label}] loading ${modelDir} (compiles engines on first use)`);
  const pipe = await openBenchPipeline(modelDir, {
    onLog: (m) => progress.log(`  ${m}`),
  });
  const bar = progress.bar(label, COMPONENTS);
  const time = async (component: string, fn: () => Promise<unknown>): Promise<Timing> => {
    bar.task(component);
    const t = await timeComponent(component, fn);
    bar.tick();
    return t;
  };
  const { sessions } = await pipe.engine('original');
  const prompt = 'A photograph of a red fox in a snowy forest at dawn';
  const clipIds = pipe.tokenizers.encodeClip([prompt]);
  const t5Ids = pipe.tokenizers.encodeT5([prompt], 512);
  const timings: Timing[] = [];
  timings.push(
    await time('tokenize (CLIP + T5)', async () => [
      pipe.tokenizers.encodeClip([prompt]),
      pipe.tokenizers.encodeT5([prompt], 512),
    ]),
  );
  timings.push(
    await time('CLIP text encoder', () =>
      sessions.clip.run({ input_ids: { data: clipIds, dims: [1, clipIds.length] } }),
    ),
  );
  timings.push(
    await time('T5 encoder (512 tokens)', () => sessions.t5.run({ input_ids: { data: t5Ids, dims: [1, 512] } })),
  );
  const request = { prompt, height: SIZE, width: SIZE, steps: 1000, guidanceScale: 3.5, seed: 0 };
  const [state] = await pipe.prepare([request]);
  timings.push(await time(`transformer step (${SIZE}x${SIZE})`, () => pipe.step([state!])));
  timings.push(await time(`VAE decode (${SIZE}x${SIZE})`, () => pipe.decode([state!])));
  timings.push(
    await time(`generate ${SIZE}x${SIZE}, ${STEPS} steps`, () =>
      pipe.generate({ prompt, height: SIZE, width: SIZE, steps: STEPS, seed: 1 }),
    ),
  );
  bar.done();
  await pipe.close();
  return { label, modelDir, timings };
}

const results = [];
if (values.only !== 'synthetic') results.push(await benchModel('flux-tiny (embedded)', join(REPO, 'models/flux-tiny')));
if (values.only !== 'tiny') {
  const dir = join(REPO, '.cache/synthetic', BENCH_CPU_CONFIG.name);
  progress.log(`writing synthetic model to ${dir} (once)`);
  writeSyntheticModel(dir, BENCH_CPU_CONFIG, join(REPO, 'models/flux-tiny'));
  results.push(await benchModel(`synthetic ${BENCH_CPU_CONFIG.name}`, dir));
}

const machine = describeMachine();
const date = new Date().toISOString();
const report = {
  benchmark: 'cpu-components',
  date,
  provider: 'onnxruntime-node cpu',
  size: SIZE,
  steps: STEPS,
  repeats: REPEATS,
  machine,
  results,
};
const md = [
  `# CPU per-component timings (${date.slice(0, 10)})`,
  '',
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}; ONNX Runtime CPU provider, float32.`,
  `Method: one warm-up, then the mean (min) of ${REPEATS} timed runs per component; ${SIZE}x${SIZE}; generate runs ${STEPS} steps.`,
  '',
  ...results.flatMap((r) => [
    `## ${r.label}`,
    '',
    '| component | mean ms | min ms |',
    '| --- | ---: | ---: |',
    ...r.timings.map((t) => `| ${t.component} | ${t.meanMs.toFixed(1)} | ${t.minMs.toFixed(1)} |`),
    '',
  ]),
].join('\n');
writeResults(REPO, 'cpu-components', report, md);
progress.stop();
process.stdout.write(`${md}\n`);
