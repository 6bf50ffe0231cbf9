/**
 * @file BFL (black-forest-labs/flux) checkpoint names → diffusers names, for the transformer (`flux1-*.safetensors`,
 * docs/FLUX_SPEC.md §5.7) and the autoencoder (`ae.safetensors`, docs/FLUX_SPEC.md §6), as lazy {@link WeightSource}s.
 *
 * The fused BFL tensors are split by rows, with every size taken from the tensors' own shapes (so tiny test models
 * map the same way as FLUX.1-dev):
 * - `double_blocks.i.{img,txt}_attn.qkv` `[3h, h]` → q, k, v `[h, h]` each (three equal row blocks);
 * - `single_blocks.i.linear1` `[3h + m, h]` → to_q, to_k, to_v `[h, h]` and proj_mlp `[m, h]`, h = its column count;
 * - `final_layer.adaLN_modulation.1` `[2h, h]` → norm_out.linear with the halves swapped, because BFL splits the
 *   modulation as (shift, scale) and diffusers as (scale, shift).
 * VAE: up-block indices are reversed (BFL `up.0` is the last, highest-resolution block), `nin_shortcut` →
 * `conv_shortcut`, `norm_out` → `conv_norm_out`, and the mid attention's 1×1 conv weights `[C, C, 1, 1]` are
 * reported as linear `[C, C]` (same bytes).
 */
import { WeightsError } from './errors.ts';
import { createMappedSource, type MappedTensor } from './mapped-source.ts';
import type { WeightSource } from './weight-source.ts';

/** Key prefixes some merged checkpoints (ComfyUI, SD-style) put in front of the model's own names. */
const TRANSFORMER_PREFIXES = ['model.diffusion_model.'];
const VAE_PREFIXES = ['first_stage_model.'];

/** One-to-one module renames at the top level of the transformer. */
const TOP_RENAMES: Readonly<Record<string, string>> = {
  img_in: 'x_embedder',
  txt_in: 'context_embedder',
  'time_in.in_layer': 'time_text_embed.timestep_embedder.linear_1',
  'time_in.out_layer': 'time_text_embed.timestep_embedder.linear_2',
  'vector_in.in_layer': 'time_text_embed.text_embedder.linear_1',
  'vector_in.out_layer': 'time_text_embed.text_embedder.linear_2',
  'guidance_in.in_layer': 'time_text_embed.guidance_embedder.linear_1',
  'guidance_in.out_layer': 'time_text_embed.guidance_embedder.linear_2',
  'final_layer.linear': 'proj_out',
};

/** Module renames inside `double_blocks.i` → `transformer_blocks.i`. */
const DOUBLE_RENAMES: Readonly<Record<string, string>> = {
  'img_mod.lin': 'norm1.linear',
  'txt_mod.lin': 'norm1_context.linear',
  'img_attn.proj': 'attn.to_out.0',
  'txt_attn.proj': 'attn.to_add_out',
  'img_attn.norm.query_norm': 'attn.norm_q',
  'img_attn.norm.key_norm': 'attn.norm_k',
  'txt_attn.norm.query_norm': 'attn.norm_added_q',
  'txt_attn.norm.key_norm': 'attn.norm_added_k',
  'img_mlp.0': 'ff.net.0.proj',
  'img_mlp.2': 'ff.net.2',
  'txt_mlp.0': 'ff_context.net.0.proj',
  'txt_mlp.2': 'ff_context.net.2',
};

/** Fused qkv modules inside a double block and the three diffusers modules their row thirds become. */
const DOUBLE_QKV: Readonly<Record<string, readonly [string, string, string]>> = {
  'img_attn.qkv': ['attn.to_q', 'attn.to_k', 'attn.to_v'],
  'txt_attn.qkv': ['attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj'],
};

/** Module renames inside `single_blocks.i` → `single_transformer_blocks.i`. */
const SINGLE_RENAMES: Readonly<Record<string, string>> = {
  'modulation.lin': 'norm.linear',
  linear2: 'proj_out',
  'norm.query_norm': 'attn.norm_q',
  'norm.key_norm': 'attn.norm_k',
};

/** BFL RMSNorm stores its gain as `scale`; diffusers calls it `weight`. */
function param(p: string): string {
  return p === 'scale' ? 'weight' : p;
}

function stripPrefix(name: string, prefixes: readonly string[]): string {
  for (const p of prefixes) if (name.startsWith(p)) return name.slice(p.length);
  return name;
}

/** Splits `a.b.c.weight` into module `a.b.c` and parameter `weight`. */
function splitParam(key: string): [string, string] {
  const dot = key.lastIndexOf('.');
  return [key.slice(0, dot), key.slice(dot + 1)];
}

/** Whether tensor names look like a BFL-format FLUX transformer (as opposed to diffusers). */
export function isBflTransformer(names: readonly string[]): boolean {
  return names.some((n) => {
    const k = stripPrefix(n, TRANSFORMER_PREFIXES);
    return k.startsWith('double_blocks.') || k === 'img_in.weight';
  });
}

/** Whether tensor names look like a BFL-format autoencoder (`decoder.up.N…`, `decoder.mid.block_1…`). */
export function isBflVae(names: readonly string[]): boolean {
  return names.some((n) => /^decoder\.(up\.\d+|mid\.block_1)\./.test(stripPrefix(n, VAE_PREFIXES)));
}

/**
 * Builds the diffusers-name → BFL-tensor map of a BFL transformer.
 *
 * @throws WeightsError naming the file when a tensor has no known mapping or a fused tensor cannot be split.
 */
export function bflTransformerKeyMap(source: WeightSource): Map<string, MappedTensor> {
  const map = new Map<string, MappedTensor>();
  const unknown: string[] = [];
  const rowsOf = (name: string) => source.info(name).shape[0] ?? 0;
  for (const src of source.names()) {
    const key = stripPrefix(src, TRANSFORMER_PREFIXES);
    const [mod, p] = splitParam(key);
    const block = /^(double_blocks|single_blocks)\.(\d+)\.(.+)$/.exec(mod);
    if (!block) {
      if (mod === 'final_layer.adaLN_modulation.1') {
        const r = rowsOf(src);
        if (r % 2 !== 0) throw new WeightsError(source.path, `'${src}' has an odd row count ${r}`);
        map.set(`norm_out.linear.${p}`, {
          source: src,
          rows: [
            [r / 2, r],
            [0, r / 2],
          ],
        });
      } else if (TOP_RENAMES[mod]) {
        map.set(`${TOP_RENAMES[mod]}.${p}`, { source: src });
      } else unknown.push(src);
      continue;
    }
    const kind = block[1]!;
    const idx = block[2]!;
    const inner = block[3]!;
    if (kind === 'double_blocks') {
      const out = `transformer_blocks.${idx}`;
      const fused = DOUBLE_QKV[inner];
      if (fused) {
        const r = rowsOf(src);
        if (r % 3 !== 0) throw new WeightsError(source.path, `'${src}' has ${r} rows, not divisible into q, k, v`);
        const t = r / 3;
        fused.forEach((name, i) => {
          map.set(`${out}.${name}.${p}`, { source: src, rows: [[i * t, (i + 1) * t]] });
        });
      } else if (DOUBLE_RENAMES[inner]) {
        map.set(`${out}.${DOUBLE_RENAMES[inner]}.${param(p)}`, { source: src });
      } else unknown.push(src);
      continue;
    }
    const out = `single_transformer_blocks.${idx}`;
    if (inner === 'linear1') {
      // The hidden size is linear1's input width; the rows are [q | k | v | mlp] = [h, h, h, rest].
      const weightName = src.replace(/\.[^.]+$/, '.weight');
      const h = source.has(weightName) ? (source.info(weightName).shape[1] ?? 0) : 0;
      const r = rowsOf(src);
      if (h <= 0 || r <= 3 * h) throw new WeightsError(source.path, `cannot split '${src}' (${r} rows, hidden ${h})`);
      const parts = ['attn.to_q', 'attn.to_k', 'attn.to_v'];
      parts.forEach((name, i) => {
        map.set(`${out}.${name}.${p}`, { source: src, rows: [[i * h, (i + 1) * h]] });
      });
      map.set(`${out}.proj_mlp.${p}`, { source: src, rows: [[3 * h, r]] });
    } else if (SINGLE_RENAMES[inner]) {
      map.set(`${out}.${SINGLE_RENAMES[inner]}.${param(p)}`, { source: src });
    } else unknown.push(src);
  }
  if (unknown.length > 0) {
    const more = unknown.length > 5 ? ` and ${unknown.length - 5} more` : '';
    throw new WeightsError(
      source.path,
      `tensors with no known BFL → diffusers mapping: ${unknown.slice(0, 5).join(', ')}${more}`,
    );
  }
  return map;
}

/** Renames inside a VAE resnet (`block_1`, `up.N.block.J`, `down.N.block.J`). */
function resnetParam(rest: string): string {
  return rest.startsWith('nin_shortcut.') ? `conv_shortcut.${rest.slice('nin_shortcut.'.length)}` : rest;
}

/** Renames of the mid attention's sub-modules. */
const ATTN_RENAMES: Readonly<Record<string, string>> = {
  norm: 'group_norm',
  q: 'to_q',
  k: 'to_k',
  v: 'to_v',
  proj_out: 'to_out.0',
};

/** VAE rename rules, tried in order; `up` is the number of decoder up blocks (for the index reversal). */
const VAE_RULES: readonly (readonly [RegExp, (m: RegExpExecArray, up: number) => string])[] = [
  [/^(quant_conv|post_quant_conv)\.(.+)$/, (m) => m[0]],
  [/^(encoder|decoder)\.(conv_in|conv_out)\.(.+)$/, (m) => m[0]],
  [/^(encoder|decoder)\.norm_out\.(.+)$/, (m) => `${m[1]}.conv_norm_out.${m[2]}`],
  [
    /^(encoder|decoder)\.mid\.block_([12])\.(.+)$/,
    (m) => `${m[1]}.mid_block.resnets.${Number(m[2]) - 1}.${resnetParam(m[3]!)}`,
  ],
  [
    /^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.+)$/,
    (m) => `${m[1]}.mid_block.attentions.0.${ATTN_RENAMES[m[2]!]}.${m[3]}`,
  ],
  [
    /^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$/,
    (m, up) => `decoder.up_blocks.${up - 1 - Number(m[1])}.resnets.${m[2]}.${resnetParam(m[3]!)}`,
  ],
  [
    /^decoder\.up\.(\d+)\.upsample\.conv\.(.+)$/,
    (m, up) => `decoder.up_blocks.${up - 1 - Number(m[1])}.upsamplers.0.conv.${m[2]}`,
  ],
  [
    /^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$/,
    (m) => `encoder.down_blocks.${m[1]}.resnets.${m[2]}.${resnetParam(m[3]!)}`,
  ],
  [/^encoder\.down\.(\d+)\.downsample\.conv\.(.+)$/, (m) => `encoder.down_blocks.${m[1]}.downsamplers.0.conv.${m[2]}`],
];

/**
 * Builds the diffusers-name → BFL-tensor map of a BFL autoencoder (decoder and, when present, encoder).
 *
 * @throws WeightsError naming the file when a tensor has no known mapping.
 */
export function bflVaeKeyMap(source: WeightSource): Map<string, MappedTensor> {
  const map = new Map<string, MappedTensor>();
  const unknown: string[] = [];
  const keys = source.names().map((src) => [src, stripPrefix(src, VAE_PREFIXES)] as const);
  const upIdx = keys.map(([, k]) => /^decoder\.up\.(\d+)\./.exec(k)?.[1]).filter((x) => x !== undefined);
  const numUp = upIdx.length > 0 ? Math.max(...upIdx.map(Number)) + 1 : 0;

  for (const [src, key] of keys) {
    let out: string | undefined;
    for (const [re, rename] of VAE_RULES) {
      const m = re.exec(key);
      if (m) {
        out = rename(m, numUp);
        break;
      }
    }
    if (out === undefined) {
      unknown.push(src);
      continue;
    }
    const s = source.info(src).shape;
    // Mid attention 1×1 conv [C, C, 1, 1] → linear [C, C]: same bytes; diffusers' attention uses nn.Linear.
    if (out.includes('.mid_block.attentions.0.') && s.length === 4 && s[2] === 1 && s[3] === 1) {
      map.set(out, { source: src, shape: [s[0]!, s[1]!] });
    } else map.set(out, { source: src });
  }
  if (unknown.length > 0) {
    const more = unknown.length > 5 ? ` and ${unknown.length - 5} more` : '';
    throw new WeightsError(
      source.path,
      `tensors with no known BFL → diffusers VAE mapping: ${unknown.slice(0, 5).join(', ')}${more}`,
    );
  }
  return map;
}

/** A BFL transformer checkpoint seen through diffusers names; owns (and closes) `source`. */
export function openBflTransformer(source: WeightSource): WeightSource {
  try {
    return createMappedSource(source, bflTransformerKeyMap(source));
  } catch (err) {
    source.close();
    throw err;
  }
}

/** A BFL `ae.safetensors` seen through diffusers AutoencoderKL names; owns (and closes) `source`. */
export function openBflVae(source: WeightSource): WeightSource {
  try {
    return createMappedSource(source, bflVaeKeyMap(source));
  } catch (err) {
    source.close();
    throw err;
  }
}
