/**
 * @file A BFL Control LoRA built from the spec (docs/FLUX_SPEC.md §7.6), and an independent reference for it: the LoRA
 * merged into the base weights (`W' = W + s·B·A`, `b' = b + s·b_B`, norms replaced), written as a model folder that
 * the plain engine runs. The runtime path (parser → feeds → LoRA engine) is checked against that merge.
 *
 * The reference keeps its own BFL → diffusers row mapping, written out here from §5.7, so a mapping mistake in the
 * parser cannot cancel itself out. Products are accumulated in float64.
 */
import { cpSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type FluxTransformerConfig, resolveTransformerConfig } from '../../shared/vocabulary/transformer-config.ts';
import { type FloatTensorInput, openComponentWeights, writeSafetensors } from '../../shared/weights/index.ts';

/** A BFL module of the reference mapping: its diffusers targets as `[module, first BFL row]`, rows per target. */
interface RefModule {
  bfl: string;
  out: number;
  in: number;
  targets: { module: string; row: number; rows: number }[];
  /** Final layer: diffusers row i comes from BFL row (i + half) mod out. */
  swap?: boolean;
}

function refModules(config: FluxTransformerConfig, inChannels: number): RefModule[] {
  const c = resolveTransformerConfig(config);
  const D = c.dim;
  const M = c.mlpDim;
  const one = (bfl: string, module: string, out: number, inF: number): RefModule => ({
    bfl,
    out,
    in: inF,
    targets: [{ module, row: 0, rows: out }],
  });
  const mods: RefModule[] = [
    one('img_in', 'x_embedder', D, inChannels),
    one('txt_in', 'context_embedder', D, c.jointAttentionDim),
    one('time_in.in_layer', 'time_text_embed.timestep_embedder.linear_1', D, 256),
    one('time_in.out_layer', 'time_text_embed.timestep_embedder.linear_2', D, D),
    one('vector_in.in_layer', 'time_text_embed.text_embedder.linear_1', D, c.pooledProjectionDim),
    one('vector_in.out_layer', 'time_text_embed.text_embedder.linear_2', D, D),
  ];
  if (c.guidanceEmbeds) {
    mods.push(one('guidance_in.in_layer', 'time_text_embed.guidance_embedder.linear_1', D, 256));
    mods.push(one('guidance_in.out_layer', 'time_text_embed.guidance_embedder.linear_2', D, D));
  }
  for (let i = 0; i < c.numLayers; i++) {
    const p = `transformer_blocks.${i}`;
    const q = `double_blocks.${i}`;
    const qkv = (names: string[]) => names.map((n, k) => ({ module: `${p}.attn.${n}`, row: k * D, rows: D }));
    mods.push({ bfl: `${q}.img_attn.qkv`, out: 3 * D, in: D, targets: qkv(['to_q', 'to_k', 'to_v']) });
    mods.push({
      bfl: `${q}.txt_attn.qkv`,
      out: 3 * D,
      in: D,
      targets: qkv(['add_q_proj', 'add_k_proj', 'add_v_proj']),
    });
    mods.push(
      one(`${q}.img_attn.proj`, `${p}.attn.to_out.0`, D, D),
      one(`${q}.txt_attn.proj`, `${p}.attn.to_add_out`, D, D),
    );
    mods.push(one(`${q}.img_mlp.0`, `${p}.ff.net.0.proj`, M, D), one(`${q}.img_mlp.2`, `${p}.ff.net.2`, D, M));
    mods.push(
      one(`${q}.txt_mlp.0`, `${p}.ff_context.net.0.proj`, M, D),
      one(`${q}.txt_mlp.2`, `${p}.ff_context.net.2`, D, M),
    );
    mods.push(
      one(`${q}.img_mod.lin`, `${p}.norm1.linear`, 6 * D, D),
      one(`${q}.txt_mod.lin`, `${p}.norm1_context.linear`, 6 * D, D),
    );
  }
  for (let j = 0; j < c.numSingleLayers; j++) {
    const p = `single_transformer_blocks.${j}`;
    const q = `single_blocks.${j}`;
    const targets = ['attn.to_q', 'attn.to_k', 'attn.to_v'].map((n, k) => ({
      module: `${p}.${n}`,
      row: k * D,
      rows: D,
    }));
    targets.push({ module: `${p}.proj_mlp`, row: 3 * D, rows: M });
    mods.push({ bfl: `${q}.linear1`, out: 3 * D + M, in: D, targets });
    mods.push(one(`${q}.linear2`, `${p}.proj_out`, D, D + M), one(`${q}.modulation.lin`, `${p}.norm.linear`, 3 * D, D));
  }
  mods.push(one('final_layer.linear', 'proj_out', c.outFeatures, D));
  mods.push({ ...one('final_layer.adaLN_modulation.1', 'norm_out.linear', 2 * D, D), swap: true });
  return mods;
}

/** BFL norm-scale stems and the diffusers norms they replace. */
function refNorms(config: FluxTransformerConfig): [string, string][] {
  const c = resolveTransformerConfig(config);
  const out: [string, string][] = [];
  for (let i = 0; i < c.numLayers; i++) {
    for (const [s, q, k] of [
      ['img', 'norm_q', 'norm_k'],
      ['txt', 'norm_added_q', 'norm_added_k'],
    ] as const) {
      out.push([`double_blocks.${i}.${s}_attn.norm.query_norm.scale`, `transformer_blocks.${i}.attn.${q}`]);
      out.push([`double_blocks.${i}.${s}_attn.norm.key_norm.scale`, `transformer_blocks.${i}.attn.${k}`]);
    }
  }
  for (let j = 0; j < c.numSingleLayers; j++) {
    out.push([`single_blocks.${j}.norm.query_norm.scale`, `single_transformer_blocks.${j}.attn.norm_q`]);
    out.push([`single_blocks.${j}.norm.key_norm.scale`, `single_transformer_blocks.${j}.attn.norm_k`]);
  }
  return out;
}

/** Deterministic values in [-amp, amp). */
function values(n: number, seed: { s: number }, amp: number): Float32Array {
  return Float32Array.from({ length: n }, () => {
    seed.s = (Math.imul(seed.s, 1664525) + 1013904223) >>> 0;
    return (seed.s / 2 ** 32 - 0.5) * 2 * amp;
  });
}

/** Options of {@link makeBflControlLora}. */
export interface ControlLoraOptions {
  rank: number;
  seed?: number;
  /** `img_in.lora_A` input width (2 × in_channels for a real control LoRA). @default the model's in_channels */
  imgInChannels?: number;
  /** Include the QK-norm replacements. @default true */
  norms?: boolean;
}

/** The tensors of a BFL Control LoRA for `config`: every Linear (with `lora_B.bias`) and every QK-norm scale. */
export function makeBflControlLora(
  config: FluxTransformerConfig,
  o: ControlLoraOptions,
): Record<string, FloatTensorInput> {
  const seed = { s: o.seed ?? 1234 };
  const inCh = o.imgInChannels ?? resolveTransformerConfig(config).inChannels;
  const t: Record<string, FloatTensorInput> = {};
  for (const m of refModules(config, inCh)) {
    // Small factors keep the change of the output moderate (a relative change of order 1 at most).
    t[`${m.bfl}.lora_A.weight`] = { dtype: 'F32', shape: [o.rank, m.in], data: values(o.rank * m.in, seed, 0.3) };
    t[`${m.bfl}.lora_B.weight`] = { dtype: 'F32', shape: [m.out, o.rank], data: values(m.out * o.rank, seed, 0.3) };
    t[`${m.bfl}.lora_B.bias`] = { dtype: 'F32', shape: [m.out], data: values(m.out, seed, 0.05) };
  }
  const headDim = resolveTransformerConfig(config).headDim;
  for (const [key] of o.norms === false ? [] : refNorms(config)) {
    t[key] = { dtype: 'F32', shape: [headDim], data: Float32Array.from(values(headDim, seed, 0.5), (v) => 1 + v) };
  }
  return t;
}

/**
 * The diffusers weights of `modelDir`'s transformer with `lora` merged at `strength`; a wider `img_in` widens
 * `x_embedder` (zero columns, then the delta).
 */
export function mergeBflControl(
  modelDir: string,
  config: FluxTransformerConfig,
  lora: Record<string, FloatTensorInput>,
  strength: number,
): Record<string, FloatTensorInput> {
  const w = openComponentWeights(join(modelDir, 'transformer'));
  const out: Record<string, FloatTensorInput> = {};
  try {
    for (const name of w.names()) out[name] = { dtype: 'F32', shape: [...w.info(name).shape], data: w.readF32(name) };
  } finally {
    w.close();
  }
  const inCh = lora['img_in.lora_A.weight']!.shape[1]!;
  const baseIn = out['x_embedder.weight']!.shape[1]!;
  if (inCh > baseIn) {
    const old = out['x_embedder.weight']!;
    const rows = old.shape[0]!;
    const wide = new Float32Array(rows * inCh);
    for (let r = 0; r < rows; r++) wide.set(old.data.subarray(r * baseIn, (r + 1) * baseIn), r * inCh);
    out['x_embedder.weight'] = { dtype: 'F32', shape: [rows, inCh], data: wide };
  }
  for (const m of refModules(config, inCh)) {
    const a = lora[`${m.bfl}.lora_A.weight`]!;
    const b = lora[`${m.bfl}.lora_B.weight`]!;
    const bias = lora[`${m.bfl}.lora_B.bias`];
    const r = a.shape[0]!;
    for (const t of m.targets) {
      const W = out[`${t.module}.weight`]!.data;
      const B0 = out[`${t.module}.bias`]?.data;
      for (let i = 0; i < t.rows; i++) {
        const half = m.out / 2;
        const src = m.swap ? (t.row + i + half) % m.out : t.row + i; // BFL row feeding diffusers row i
        for (let col = 0; col < m.in; col++) {
          let acc = 0;
          for (let k = 0; k < r; k++) acc += b.data[src * r + k]! * a.data[k * m.in + col]!;
          W[i * m.in + col] = W[i * m.in + col]! + strength * acc;
        }
        if (bias && B0) B0[i] = B0[i]! + strength * bias.data[src]!;
      }
    }
  }
  for (const [key, module] of refNorms(config).filter(([k]) => lora[k]))
    out[`${module}.weight`] = { ...lora[key]!, data: Float32Array.from(lora[key]!.data) };
  return out;
}

/**
 * Writes a model folder at `outDir` whose transformer holds `weights` (config `inChannels` set when widened) and
 * whose other components are symlinks to `modelDir`'s.
 */
export function writeMergedModel(
  modelDir: string,
  outDir: string,
  config: FluxTransformerConfig,
  weights: Record<string, FloatTensorInput>,
): string {
  mkdirSync(join(outDir, 'transformer'), { recursive: true });
  for (const entry of readdirSync(modelDir)) {
    if (entry === 'transformer') continue;
    if (entry.endsWith('.json')) cpSync(join(modelDir, entry), join(outDir, entry));
    else symlinkSync(resolve(modelDir, entry), join(outDir, entry));
  }
  const inChannels = weights['x_embedder.weight']!.shape[1]!;
  const cfg = {
    ...config,
    in_channels: inChannels,
    out_channels: config.out_channels ?? resolveTransformerConfig(config).inChannels,
  };
  writeSafetensors(join(outDir, 'transformer', 'diffusion_pytorch_model.safetensors'), weights);
  writeFileSync(join(outDir, 'transformer', 'config.json'), JSON.stringify(cfg, null, 2));
  return outDir;
}
