/**
 * Copies the flux-tiny reference fixtures the engine's self-test needs into a folder that travels to the GPU
 * machine (`../shared` does not), and writes `pipeline_tokens.json`: the CLIP and T5 ids of every pipeline-case
 * prompt, produced by the project's own tokenizer (the fixtures hold ids only for `tokenizer_cases.json`).
 *
 * Usage: npx tsx engines/cuda/scripts/prepare-fixtures.ts <fixtures dir> <out dir>
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadFluxTokenizers } from '../../../src/pipeline/flux/tokenize.ts';

const [src = '../shared/fixtures/flux-tiny-reference', out = '.device-fixtures'] = process.argv.slice(2);
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
console.log(`fixtures in ${out}: ${files.length} files + pipeline_tokens.json (${Object.keys(prompts).length} prompts)`);
