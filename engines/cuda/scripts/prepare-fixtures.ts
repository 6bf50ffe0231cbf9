/**
 * Copies the flux-tiny reference fixtures the engine's self-test needs into a folder that travels to the GPU
 * machine, and writes `pipeline_tokens.json`: the CLIP and T5 ids of every pipeline-case
 * prompt, produced by the project's own tokenizer (the fixtures hold ids only for `tokenizer_cases.json`).
 * Also writes `flux-tiny-bfl/`: the embedded model's transformer and VAE as BFL single files (F32, so the f32
 * conformance limits hold) with `load-spec.json`, the spec the server would send for that layout (file paths
 * relative to that folder; the text encoders are the repository's `models/flux-tiny` ones).
 * Also writes `edit/`: the editing fixtures (test/fixtures/flux-tiny-edit) with `edit_tokens.json` (the ids of every
 * prompt and negative prompt) and, per img2img / inpainting case, `<case>_draws.safetensors`: the draws of the case's
 * one torch generator as diffusers makes them, `eps` [B, 16, h, w] (the posterior sample's normals) then
 * `noise_packed` [B, L, 64], checked here against the inpainting cases' stored `noise_packed`.
 * Also writes `lora/`: each fixture LoRA reduced by the server's own code (`src/pipeline/cuda-lora.ts`) to the CUDA
 * engine's factors per layer, `<case>.cuda.safetensors` (`<layer>.lora_a` [r, in], `<layer>.lora_b` [out, r],
 * `<layer>.lora_bias` [out] when it has one; layer = the engine Linear's checkpoint name), the diffusers reference
 * outputs, and `lora_index.json` (name, file, strength, expected); and `lora/control/`, the BFL Control case
 * (control-fixture.ts: a control LoRA's factors and norms, a control request, the ONNX pipeline's result).
 *
 * Usage: npx tsx engines/cuda/scripts/prepare-fixtures.ts [fixtures dir] [out dir] [edit fixtures dir]
 * (defaults: the repository's test/fixtures/flux-tiny-reference, .device-fixtures, test/fixtures/flux-tiny-edit)
 */
import { cpSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { cudaLoraLayers, cudaLoraLayout } from '../../../src/pipeline/cuda-lora.ts';
import { latentGrid, packLatents } from '../../../src/pipeline/flux/latents.ts';
import { TorchCpuGenerator } from '../../../src/pipeline/flux/noise.ts';
import { loadFluxTokenizers } from '../../../src/pipeline/flux/tokenize.ts';
import { loraModelSpec } from '../../../src/pipeline/lora/model-layers.ts';
import { parseLoraFile } from '../../../src/pipeline/lora/parse.ts';
import { cudaLoadSpec } from '../../../src/runtime/cuda/load-spec.ts';
import type { FluxTransformerConfig } from '../../../src/shared/vocabulary/transformer-config.ts';
import {
  openSafetensors,
  resolveModelRepo,
  type TensorInput,
  writeSafetensors,
} from '../../../src/shared/weights/index.ts';
import { writeBflCheckpoints } from '../../../tools/bfl-checkpoint.ts';
import { writeControlFixture } from './control-fixture.ts';

const [src = 'test/fixtures/flux-tiny-reference', out = '.device-fixtures', editSrc = 'test/fixtures/flux-tiny-edit'] =
  process.argv.slice(2);
const files = [
  'index.json',
  'tokenizer_cases.json',
  'text_encoders.safetensors',
  'transformer_case.safetensors',
  'pipeline_case_0.safetensors',
  'pipeline_case_1.safetensors',
];
await mkdir(out, { recursive: true });
for (const f of files) await copyFile(join(src, f), join(out, f));

const index = JSON.parse(await readFile(join(src, 'index.json'), 'utf8')) as {
  pipeline_cases: { file: string; prompts: string[] }[];
};
const tok = await loadFluxTokenizers(resolve('models/flux-tiny'));
// Check the tokenizer against the fixture ids before trusting it for the pipeline prompts.
const cases = JSON.parse(await readFile(join(src, 'tokenizer_cases.json'), 'utf8')) as {
  prompt: string;
  clip_input_ids: number[];
  t5_input_ids: number[];
}[];
let mismatches = 0;
for (const c of cases) {
  const clip = Array.from(tok.encodeClip([c.prompt]), Number);
  const t5 = Array.from(tok.encodeT5([c.prompt], c.t5_input_ids.length), Number);
  if (clip.join() !== c.clip_input_ids.join() || t5.join() !== c.t5_input_ids.join()) mismatches++;
}
if (mismatches > 0) throw new Error(`tokenizer disagrees with tokenizer_cases.json on ${mismatches} prompts`);

const prompts: Record<string, { clip: number[]; t5: number[] }> = {};
for (const pc of index.pipeline_cases) {
  for (const p of pc.prompts) {
    prompts[p] = { clip: Array.from(tok.encodeClip([p]), Number), t5: Array.from(tok.encodeT5([p], 512), Number) };
  }
}
await writeFile(join(out, 'pipeline_tokens.json'), JSON.stringify(prompts));

// Editing cases: the fixtures, every prompt's ids, and the generator's draws (eps first, then the noise, each for
// the whole batch: diffusers passes one generator).
const editOut = join(out, 'edit');
await mkdir(editOut, { recursive: true });
const editIndex = JSON.parse(await readFile(join(editSrc, 'edit_index.json'), 'utf8')) as {
  cases: {
    kind: string;
    name: string;
    file: string;
    prompts: string[];
    negative?: string[];
    height: number;
    width: number;
    seed: number;
  }[];
};
await copyFile(join(editSrc, 'edit_index.json'), join(editOut, 'edit_index.json'));
const editPrompts: Record<string, { clip: number[]; t5: number[] }> = {};
let drawsChecked = 0;
for (const c of editIndex.cases) {
  await copyFile(join(editSrc, c.file), join(editOut, c.file));
  for (const p of [...c.prompts, ...(c.negative ?? [])]) {
    editPrompts[p] = { clip: Array.from(tok.encodeClip([p]), Number), t5: Array.from(tok.encodeT5([p], 512), Number) };
  }
  if (c.kind === 'true_cfg') continue;
  const b = c.prompts.length;
  const grid = latentGrid(c.height, c.width);
  const n = 16 * grid.h * grid.w;
  const gen = new TorchCpuGenerator(c.seed);
  const eps = gen.randn(b * n); // [B, 16, h, w]
  const noise = packLatents(gen.randn(b * n), b, 16, grid.h, grid.w); // [B, L, 64]
  const f = openSafetensors(join(editSrc, c.file));
  try {
    if (f.names().includes('noise_packed')) {
      const ref = f.readF32('noise_packed');
      if (ref.length !== noise.length || ref.some((v, i) => v !== noise[i])) {
        throw new Error(`${c.name}: the generator's noise differs from the fixture's noise_packed`);
      }
      drawsChecked++;
    }
  } finally {
    f.close();
  }
  writeSafetensors(join(editOut, `${c.name}_draws.safetensors`), {
    eps: { dtype: 'F32', shape: [b, 16, grid.h, grid.w], data: eps },
    noise_packed: { dtype: 'F32', shape: [b, grid.seqLen, 64], data: noise },
  });
}
await writeFile(join(editOut, 'edit_tokens.json'), JSON.stringify(editPrompts));

// BFL layout: the checkpoints go into the fixture folder; a scratch repo links them beside the embedded model's
// text encoders, tokenizers and scheduler (and the transformer/VAE configs: the tiny head size needs
// axes_dims_rope), so the spec comes from the same resolution the server runs.
const model = resolve('models/flux-tiny');
const bflDir = resolve(out, 'flux-tiny-bfl');
mkdirSync(bflDir, { recursive: true });
writeBflCheckpoints(bflDir, 'F32');
const scratch = mkdtempSync(join(tmpdir(), 'fluxql-bfl-spec-'));
try {
  for (const sub of ['text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'scheduler'])
    symlinkSync(join(model, sub), join(scratch, sub));
  for (const c of ['transformer', 'vae']) {
    mkdirSync(join(scratch, c));
    cpSync(join(model, c, 'config.json'), join(scratch, c, 'config.json'));
  }
  for (const f of ['flux1-dev.safetensors', 'ae.safetensors']) symlinkSync(join(bflDir, f), join(scratch, f));
  const spec = cudaLoadSpec(resolveModelRepo(scratch));
  // Paths relative to the spec's folder, through the links, so they hold on the GPU machine's copy of the tree.
  const components = Object.fromEntries(
    Object.entries(spec.components).map(([name, c]) => [
      name,
      { ...c, files: c.files.map((f) => relative(bflDir, realpathSync(f))) },
    ]),
  );
  await writeFile(join(bflDir, 'load-spec.json'), JSON.stringify({ ...spec, components }));
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
// LoRA cases: the engine's factors of each fixture LoRA, as the server would send them with lora_load.
const loraOut = join(out, 'lora');
await mkdir(loraOut, { recursive: true });
const tinyConfig = resolveModelRepo(model).components.transformer.config as FluxTransformerConfig;
const loraLayout = cudaLoraLayout(tinyConfig);
const loraSpec = loraModelSpec(tinyConfig);
const loraCases = (
  JSON.parse(await readFile(join(src, 'index.json'), 'utf8')) as {
    lora_cases: { lora_file: string; format: string; strength: number; expected: string }[];
  }
).lora_cases;
const loraIndex = [];
for (const c of loraCases) {
  const layers = cudaLoraLayers(loraLayout, c.lora_file, parseLoraFile(join(src, c.lora_file), loraSpec, c.lora_file));
  const tensors: Record<string, TensorInput> = {};
  for (const l of layers) {
    tensors[`${l.layer}.lora_a`] = { dtype: 'F32', shape: [l.rank, l.inFeatures], data: l.a };
    tensors[`${l.layer}.lora_b`] = { dtype: 'F32', shape: [l.outFeatures, l.rank], data: l.b };
    if (l.bias) tensors[`${l.layer}.lora_bias`] = { dtype: 'F32', shape: [l.outFeatures], data: l.bias };
  }
  const file = c.lora_file.replace(/\.safetensors$/, '.cuda.safetensors');
  writeSafetensors(join(loraOut, file), tensors);
  await copyFile(join(src, c.expected), join(loraOut, c.expected));
  loraIndex.push({
    name: c.lora_file,
    format: c.format,
    file,
    strength: c.strength,
    expected: c.expected,
    layers: layers.length,
  });
}
await writeFile(join(loraOut, 'lora_index.json'), JSON.stringify({ cases: loraIndex }, null, 1));
// BFL Control: a control LoRA as engine factors and norms, one control request and the ONNX pipeline's result for it.
const controlSummary = await writeControlFixture(loraOut, model, tinyConfig, tok);
console.log(
  `fixtures in ${out}: ${files.length} files + pipeline_tokens.json (${Object.keys(prompts).length} prompts) + ` +
    'flux-tiny-bfl/ (BFL checkpoints, load-spec.json) + ' +
    `edit/ (${editIndex.cases.length} cases, ${Object.keys(editPrompts).length} prompts, draws equal to the fixture noise in ${drawsChecked} cases) + ` +
    `lora/ (${loraIndex.length} LoRAs as engine factors) + ${controlSummary}`,
);
