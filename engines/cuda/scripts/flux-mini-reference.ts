/**
 * @file flux-mini inputs (and ONNX Runtime's images) for the CUDA engine's Python checks on the GPU machine, made here
 * (a machine with ONNX Runtime and the tokenizers) and carried there, where no Node bundle fits beside the repository
 * once flux-mini is in it (the device tool takes 64 MiB in all). Two files:
 * - parity (default): two grammar prompts with their exact engine inputs (token ids, packed starting noise, sigmas,
 *   guidance) and ORT's images of them, for engines/cuda/tests/flux_mini_parity_test.py (issue 14: "both engines
 *   produce it");
 * - `--prompts N`: `npm run bench:quality`'s first N prompts (prompt seed 14, image i with seed 1000 + i) with their
 *   engine inputs and no images, for engines/cuda/scripts/cuda-quality.py (issue 15: each CUDA mode's quality and
 *   flux-mini's cached-step pattern).
 *   node --import tsx engines/cuda/scripts/flux-mini-reference.ts .device-carry/flux-mini-ref.json
 *   node --import tsx engines/cuda/scripts/flux-mini-reference.ts .device-carry/flux-mini-quality.json --prompts 48
 */
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { latentGrid, packLatents } from '../../../src/pipeline/flux/latents.ts';
import { noiseForSeeds } from '../../../src/pipeline/flux/noise.ts';
import { FluxPipeline } from '../../../src/pipeline/flux/pipeline.ts';
import { fluxSigmas, loadSchedulerConfig } from '../../../src/pipeline/flux/schedule.ts';
import { loadFluxTokenizers } from '../../../src/pipeline/flux/tokenize.ts';
import { caption, sampleCaptions } from '../../../src/shared/caption-grammar/grammar.ts';
import { engineCompiler } from '../../compiler/port.ts';

// The model's native size and the pipeline defaults: what a user of the default model gets.
const SIZE = 256;
const STEPS = 28;
const GUIDANCE = 3.5;
// Parity: two grammar captions in neither the tests' nor the benchmark's prompt sets.
const PARITY = {
  prompts: ['a red circle on a blue background in the top left, small', 'a yellow triangle on a purple background'],
  seeds: [5, 6],
};
// bench:quality's prompt seed and image seeds (bench/quality-grammar.ts).
const BENCH_PROMPT_SEED = 14;
const BENCH_IMAGE_SEED = 1000;

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { prompts: { type: 'string' }, model: { type: 'string', default: 'models/flux-mini' } },
});
const out = positionals[0];
if (!out) throw new Error('usage: flux-mini-reference.ts OUT.json [--prompts N] [--model DIR]');
const model = resolve(values.model);
const n = values.prompts === undefined ? 0 : Number(values.prompts);
if (values.prompts !== undefined && !(Number.isInteger(n) && n > 0)) throw new Error('--prompts: a positive integer');
const prompts = n > 0 ? sampleCaptions(n, BENCH_PROMPT_SEED).map(caption) : PARITY.prompts;
const seeds = n > 0 ? prompts.map((_, i) => BENCH_IMAGE_SEED + i) : PARITY.seeds;

const grid = latentGrid(SIZE, SIZE);
// Starting noise [B, 16, h, w] (NCHW, one generator per seed as the server draws it) -> packed [B, L, 64].
const noise = noiseForSeeds(seeds, 16, grid.h, grid.w);
const latents = packLatents(noise, prompts.length, 16, grid.h, grid.w);
const tok = await loadFluxTokenizers(model);
const t5Len = tok.defaultT5Length;
const sched = fluxSigmas(STEPS, grid.seqLen, loadSchedulerConfig(model));
const i32 = (ids: BigInt64Array) => Buffer.from(Int32Array.from(ids, Number).buffer).toString('base64');
const inputs = {
  model: basename(model),
  prompts,
  seeds,
  height: SIZE,
  width: SIZE,
  steps: STEPS,
  guidance: GUIDANCE,
  t5_len: t5Len,
  clip: i32(tok.encodeClip(prompts)), // int32 [B, 77]
  t5: i32(tok.encodeT5(prompts, t5Len)), // int32 [B, t5_len]
  latents: Buffer.from(latents.buffer).toString('base64'), // float32 [B, L, 64]
  sigmas: Array.from(sched.sigmas), // [STEPS + 1], ending at 0
};

if (n > 0) {
  writeFileSync(out, JSON.stringify(inputs));
  console.log(`${out}: inputs of ${n} bench:quality prompts, ${SIZE}x${SIZE}, ${STEPS} steps, T5 length ${t5Len}`);
} else {
  const cacheDir = await mkdtemp(join(tmpdir(), 'fluxql-mini-ref-'));
  const pipe = await FluxPipeline.fromPretrained(model, { compiler: engineCompiler, cacheDir });
  try {
    const r = await pipe.generate({
      prompts,
      latents,
      width: SIZE,
      height: SIZE,
      steps: STEPS,
      guidanceScale: GUIDANCE,
      maxSequenceLength: t5Len,
    });
    // ORT's images, RGB8 [H, W, 3] each.
    const images = r.images.map((im) => Buffer.from(im.data).toString('base64'));
    writeFileSync(out, JSON.stringify({ ...inputs, images }));
    console.log(`${out}: ${prompts.length} ORT images ${SIZE}x${SIZE}, ${STEPS} steps, T5 length ${t5Len}`);
  } finally {
    await pipe.close();
    await rm(cacheDir, { recursive: true, force: true });
  }
}
