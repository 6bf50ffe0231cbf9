/**
 * @file LoRA files named after the BFL modules (docs/FLUX_SPEC.md §5.7): kohya / sd-scripts / ComfyUI (§7.4) and BFL
 * Control LoRAs (§7.6). Both map a BFL module to one or more diffusers modules through {@link LoraModelSpec.bfl},
 * splitting fused `qkv` / `linear1` rows and swapping the final layer's modulation halves.
 */
import type { FactorCollector } from './collect.ts';
import { LoraError, listKeys } from './errors.ts';
import { splitBflPair } from './factor-math.ts';
import type { BflModule } from './model-layers.ts';

const SUFFIXES = ['.lora_down.weight', '.lora_up.weight', '.alpha'] as const;

/** A kohya module name (`lora_unet_double_blocks_0_img_attn_qkv`) → the BFL module, or a diffusers module. */
function kohyaTable(c: FactorCollector): Map<string, BflModule> {
  const table = new Map<string, BflModule>();
  for (const [name, mod] of c.spec.bfl) table.set(`lora_unet_${name.replaceAll('.', '_')}`, mod);
  // "Mixture" files name diffusers modules: lora_transformer_single_transformer_blocks_0_attn_to_q.
  for (const [module, shape] of c.spec.linears) {
    table.set(`lora_transformer_${module.replaceAll('.', '_')}`, {
      parts: [{ module, outFeatures: shape.outFeatures }],
    });
  }
  return table;
}

/**
 * The kohya stem of a key: ComfyUI's `diffusion_model.<bfl dotted>` becomes `lora_unet_<bfl underscored>`, and
 * `transformer.<diffusers module>` becomes the mixture spelling; other keys are returned as they are.
 */
function kohyaStem(stem: string): string {
  if (stem.startsWith('diffusion_model.'))
    return `lora_unet_${stem.slice('diffusion_model.'.length).replaceAll('.', '_')}`;
  if (stem.startsWith('transformer.'))
    return `lora_transformer_${stem.slice('transformer.'.length).replaceAll('.', '_')}`;
  return stem;
}

/** Text-encoder keys of kohya / ComfyUI files: CLIP LoRAs are not supported by our engines. */
const TEXT_ENCODER = /^(lora_te\d?_|text_encoders?\.)/;

/** Parses a kohya-family file into `c`: scale `alpha / r` (alpha defaults to r), block-diagonal-aware splits. */
export function parseKohya(c: FactorCollector): void {
  const table = kohyaTable(c);
  const names = c.reader.names();
  const te = names.filter((k) => TEXT_ENCODER.test(k));
  if (te.length > 0) {
    throw new LoraError('unsupported', `text-encoder LoRA keys are not supported: ${listKeys(te)}`, c.reader.label, te);
  }
  const byStem = new Map<string, Partial<Record<(typeof SUFFIXES)[number], string>>>();
  for (const key of names) {
    const suffix = SUFFIXES.find((s) => key.endsWith(s));
    if (!suffix) continue;
    const stem = kohyaStem(key.slice(0, -suffix.length));
    const g = byStem.get(stem) ?? {};
    g[suffix] = key;
    byStem.set(stem, g);
  }
  for (const [stem, g] of byStem) {
    const mod = table.get(stem);
    const down = g['.lora_down.weight'];
    const up = g['.lora_up.weight'];
    if (!mod || !down || !up) continue;
    const pair = c.pair(down, up);
    let scale = 1;
    if (g['.alpha']) {
      scale = c.scalar(g['.alpha']) / pair.rank;
      c.use(g['.alpha']);
    }
    for (const s of splitBflPair(pair, checkedRows(c, mod, pair.outFeatures, up), { blockDiagonal: true })) {
      c.add(s.module, s.pair, scale, [down, up]);
    }
  }
}

/** Parses a BFL Control LoRA into `c`: `<bfl>.lora_A/lora_B(.bias)` at scale 1, plus QK-norm replacements. */
export function parseBflControl(c: FactorCollector): void {
  const names = new Set(c.reader.names());
  for (const key of names) {
    const stripped = key.startsWith('diffusion_model.') ? key.slice('diffusion_model.'.length) : key;
    const norm = /^(.*)\.scale$/.exec(stripped);
    if (norm) {
      const module = c.spec.bflNorms.get(norm[1]!);
      if (!module) continue;
      c.norms.set(module, c.reader.f32(key));
      c.use(key);
      continue;
    }
    const m = /^(.*)\.lora_A\.weight$/.exec(stripped);
    if (!m) continue;
    const mod = c.spec.bfl.get(m[1]!);
    const upKey = key.replace(/\.lora_A\.weight$/, '.lora_B.weight');
    const biasKey = key.replace(/\.lora_A\.weight$/, '.lora_B.bias');
    if (!mod || !names.has(upKey)) continue;
    const pair = c.pair(key, upKey, names.has(biasKey) ? biasKey : undefined);
    for (const s of splitBflPair(pair, checkedRows(c, mod, pair.outFeatures, upKey)))
      c.add(s.module, s.pair, 1, [key, upKey]);
  }
}

/** The module, after checking the up factor has the fused module's total row count. */
function checkedRows(c: FactorCollector, mod: BflModule, rows: number, upKey: string): BflModule {
  const expected = mod.parts.reduce((n, p) => n + p.outFeatures, 0);
  if (rows !== expected) {
    throw new LoraError(
      'shape_mismatch',
      `${upKey} has ${rows} rows, the model's ${mod.parts.map((p) => p.module).join(' + ')} have ${expected}`,
      c.reader.label,
      [upKey],
    );
  }
  return mod;
}
