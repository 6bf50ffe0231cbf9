/**
 * @file Tokenizes every caption of the flux-mini grammar (grammar.json) with the project's own FLUX tokenizers, so
 * training feeds the transformer exactly the ids the pipeline will. Writes `caption_tokens.json`:
 * `{captions: string[], clip: number[][], t5: number[][]}` holding only the real tokens (CLIP: BOS … EOS, T5: … `</s>`);
 * train.py pads them as the pipeline does (CLIP to 77 with 49407, T5 to 512 with 0).
 *
 * Run from the repository root: `node --import tsx tools/train-mini/tokenize-captions.ts`
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadFluxTokenizers } from '../../src/pipeline/flux/tokenize.ts';

const here = dirname(fileURLToPath(import.meta.url));
const grammar = JSON.parse(readFileSync(join(here, 'grammar.json'), 'utf8')) as {
  colors: Record<string, number[]>;
  shapes: string[];
  positions: string[];
  sizes: string[];
};

/** Same order as grammar.py: object color, background (≠ object), shape, position (none first), size (none first). */
function captions(): string[] {
  const colors = Object.keys(grammar.colors);
  const positions = [null, ...grammar.positions];
  const sizes = [null, ...grammar.sizes];
  const out: string[] = [];
  for (const o of colors)
    for (const b of colors) {
      if (b === o) continue;
      for (const s of grammar.shapes)
        for (const p of positions)
          for (const z of sizes)
            out.push(`a ${o} ${s} on a ${b} background${p ? ` in the ${p}` : ''}${z ? `, ${z}` : ''}`);
    }
  return out;
}

const all = captions();
const tok = await loadFluxTokenizers(resolve(here, '../../models/flux-tiny'));
const clipIds = tok.encodeClip(all);
const t5Ids = tok.encodeT5(all, 512);
const clip: number[][] = [];
const t5: number[][] = [];
for (let i = 0; i < all.length; i++) {
  const c = Array.from(clipIds.subarray(i * tok.clipLength, (i + 1) * tok.clipLength), Number);
  clip.push(c.slice(0, c.indexOf(49407) + 1)); // through the first EOS
  const t = Array.from(t5Ids.subarray(i * 512, (i + 1) * 512), Number);
  t5.push(t.slice(0, t.indexOf(1) + 1)); // through `</s>`
}
writeFileSync(join(here, 'caption_tokens.json'), `${JSON.stringify({ captions: all, clip, t5 })}\n`);
console.log(`${all.length} captions → ${join(here, 'caption_tokens.json')}`);
