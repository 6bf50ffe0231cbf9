/**
 * @file ONNX Runtime's flux-mini images for the CUDA engine's parity check (issue 14: "both engines produce it"), made
 * here (a machine with ONNX Runtime) and carried to the GPU machine, where no Node bundle fits beside the repository
 * once flux-mini is in it (the device tool takes 64 MiB in all). The GPU side is Python over the engine's protocol:
 * engines/cuda/tests/flux_mini_parity_test.py feeds the engine the exact inputs written here (token ids, packed
 * starting noise, sigmas, guidance) and compares its images with these.
 *   node --import tsx engines/cuda/scripts/flux-mini-reference.ts .device-carry/flux-mini-ref.json [model dir]
 */

import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { latentGrid, packLatents } from '../../../src/pipeline/flux/latents.ts';
import { noiseForSeeds } from '../../../src/pipeline/flux/noise.ts';
import { FluxPipeline } from '../../../src/pipeline/flux/pipeline.ts';
import { fluxSigmas, loadSchedulerConfig } from '../../../src/pipeline/flux/schedule.ts';
import { loadFluxTokenizers } from '../../../src/pipeline/flux/tokenize.ts';
import { engineCompiler } from '../../compiler/port.ts';

// Two grammar captions (neither in the tests' nor the benchmark's prompt sets), the model's native size and the
// pipeline defaults: what a user of the default model gets.
const PROMPTS = [
  'a red circle on a blue background in the top left, small',
  'a yellow triangle on a purple background',
];
const SEEDS = [5, 6];
const SIZE = 256;
const STEPS = 28;
const GUIDANCE = 3.5;

const out = process.argv[2];
if (!out) throw new Error('usage: flux-mini-reference.ts OUT.json [model dir]');
const model = resolve(process.argv[3] ?? 'models/flux-mini');

const grid = latentGrid(SIZE, SIZE);
// Starting noise [B, 16, h, w] (NCHW, one generator per seed as the server draws it) -> packed [B, L, 64].
const noise = noiseForSeeds(SEEDS, 16, grid.h, grid.w);
const latents = packLatents(noise, PROMPTS.length, 16, grid.h, grid.w);
const tok = await loadFluxTokenizers(model);
const t5Len = tok.defaultT5Length;
const sched = fluxSigmas(STEPS, grid.seqLen, loadSchedulerConfig(model));
const i32 = (ids: BigInt64Array) => Buffer.from(Int32Array.from(ids, Number).buffer).toString('base64');

const cacheDir = await mkdtemp(join(tmpdir(), 'fluxql-mini-ref-'));
const pipe = await FluxPipeline.fromPretrained(model, { compiler: engineCompiler, cacheDir });
try {
  const r = await pipe.generate({
    prompts: PROMPTS,
    latents,
    width: SIZE,
    height: SIZE,
    steps: STEPS,
    guidanceScale: GUIDANCE,
    maxSequenceLength: t5Len,
  });
  writeFileSync(
    out,
    JSON.stringify({
      model: basename(model),
      prompts: PROMPTS,
      seeds: SEEDS,
      height: SIZE,
      width: SIZE,
      steps: STEPS,
      guidance: GUIDANCE,
      t5_len: t5Len,
      clip: i32(tok.encodeClip(PROMPTS)), // int32 [B, 77]
      t5: i32(tok.encodeT5(PROMPTS, t5Len)), // int32 [B, t5_len]
      latents: Buffer.from(latents.buffer).toString('base64'), // float32 [B, L, 64]
      sigmas: Array.from(sched.sigmas), // [STEPS + 1], ending at 0
      images: r.images.map((im) => Buffer.from(im.data).toString('base64')), // RGB8 [H, W, 3] each
    }),
  );
  console.log(`${out}: ${PROMPTS.length} ORT images ${SIZE}x${SIZE}, ${STEPS} steps, T5 length ${t5Len}`);
} finally {
  await pipe.close();
  await rm(cacheDir, { recursive: true, force: true });
}
