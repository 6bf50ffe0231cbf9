/**
 * @file Writes a FLUX.1-structured model repository with random weights at any size, in the diffusers layout the
 * real FLUX.1-dev uses (real tokenizers and scheduler copied from the embedded model). The real weights cannot be
 * downloaded here; for latency the values do not matter, only the shapes, so benchmarks run on these.
 *
 * Weights are uniform in ±sqrt(3/fan_in) (unit-variance activations through each Linear), norms are 1, biases small,
 * so the forward stays finite through dozens of blocks.
 */
import { cpSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type TensorInput, writeSafetensors } from '../../src/shared/weights/index.ts';

/** Sizes of a synthetic model. */
export interface SyntheticConfig {
  name: string;
  transformer: {
    hidden: number;
    heads: number;
    doubleBlocks: number;
    singleBlocks: number;
    axes: [number, number, number];
  };
  clip: { hidden: number; layers: number; heads: number; intermediate: number };
  t5: { dModel: number; layers: number; heads: number; dKv: number; dFf: number };
  vae: { channels: [number, number, number, number]; layersPerBlock: number; groups: number };
}

/** The "larger synthetic configuration": hidden 768, 4 double + 8 single blocks. */
export const BENCH_CPU_CONFIG: SyntheticConfig = {
  name: 'flux-synthetic-768',
  transformer: { hidden: 768, heads: 6, doubleBlocks: 4, singleBlocks: 8, axes: [16, 56, 56] },
  clip: { hidden: 768, layers: 12, heads: 12, intermediate: 3072 },
  t5: { dModel: 1024, layers: 4, heads: 16, dKv: 64, dFf: 2816 },
  vae: { channels: [32, 64, 128, 128], layersPerBlock: 2, groups: 32 },
};

/** Small fast PRNG (xorshift32): weights need not be torch-compatible, only reproducible. */
class Rng {
  constructor(private s: number) {
    if (this.s === 0) this.s = 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 4294967296;
  }
}

type Tensors = Record<string, TensorInput>;

function filler(rng: Rng) {
  const uniform = (shape: number[], bound: number): TensorInput => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = (rng.next() * 2 - 1) * bound;
    return { dtype: 'F32', shape, data };
  };
  const constant = (shape: number[], v: number): TensorInput => ({
    dtype: 'F32',
    shape,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(v),
  });
  return {
    /** A Linear `[out, in]` (+ bias). */
    linear(t: Tensors, name: string, out: number, inF: number, bias = true): void {
      t[`${name}.weight`] = uniform([out, inF], Math.sqrt(3 / inF));
      if (bias) t[`${name}.bias`] = uniform([out], 0.02);
    },
    conv(t: Tensors, name: string, out: number, inC: number, k: number): void {
      t[`${name}.weight`] = uniform([out, inC, k, k], Math.sqrt(3 / (inC * k * k)));
      t[`${name}.bias`] = uniform([out], 0.02);
    },
    norm(t: Tensors, name: string, dim: number, bias = true): void {
      t[`${name}.weight`] = constant([dim], 1);
      if (bias) t[`${name}.bias`] = constant([dim], 0);
    },
    embedding(t: Tensors, name: string, rows: number, dim: number): void {
      t[name] = uniform([rows, dim], 1);
    },
  };
}

function transformerTensors(c: SyntheticConfig, f: ReturnType<typeof filler>): Tensors {
  const t: Tensors = {};
  const { hidden: d, doubleBlocks, singleBlocks } = c.transformer;
  const hd = d / c.transformer.heads;
  const mlp = 4 * d;
  f.linear(t, 'x_embedder', d, 64);
  f.linear(t, 'context_embedder', d, c.t5.dModel);
  for (const e of ['timestep_embedder', 'guidance_embedder']) {
    f.linear(t, `time_text_embed.${e}.linear_1`, d, 256);
    f.linear(t, `time_text_embed.${e}.linear_2`, d, d);
  }
  f.linear(t, 'time_text_embed.text_embedder.linear_1', d, c.clip.hidden);
  f.linear(t, 'time_text_embed.text_embedder.linear_2', d, d);
  for (let i = 0; i < doubleBlocks; i++) {
    const p = `transformer_blocks.${i}`;
    f.linear(t, `${p}.norm1.linear`, 6 * d, d);
    f.linear(t, `${p}.norm1_context.linear`, 6 * d, d);
    for (const m of ['to_q', 'to_k', 'to_v', 'add_q_proj', 'add_k_proj', 'add_v_proj', 'to_out.0', 'to_add_out'])
      f.linear(t, `${p}.attn.${m}`, d, d);
    for (const m of ['norm_q', 'norm_k', 'norm_added_q', 'norm_added_k']) f.norm(t, `${p}.attn.${m}`, hd, false);
    for (const ff of ['ff', 'ff_context']) {
      f.linear(t, `${p}.${ff}.net.0.proj`, mlp, d);
      f.linear(t, `${p}.${ff}.net.2`, d, mlp);
    }
  }
  for (let j = 0; j < singleBlocks; j++) {
    const p = `single_transformer_blocks.${j}`;
    f.linear(t, `${p}.norm.linear`, 3 * d, d);
    for (const m of ['to_q', 'to_k', 'to_v']) f.linear(t, `${p}.attn.${m}`, d, d);
    f.norm(t, `${p}.attn.norm_q`, hd, false);
    f.norm(t, `${p}.attn.norm_k`, hd, false);
    f.linear(t, `${p}.proj_mlp`, mlp, d);
    f.linear(t, `${p}.proj_out`, d, d + mlp);
  }
  f.linear(t, 'norm_out.linear', 2 * d, d);
  f.linear(t, 'proj_out', 64, d);
  return t;
}

function clipTensors(c: SyntheticConfig, f: ReturnType<typeof filler>): Tensors {
  const t: Tensors = {};
  const { hidden: d, layers, intermediate } = c.clip;
  f.embedding(t, 'text_model.embeddings.token_embedding.weight', 49408, d);
  f.embedding(t, 'text_model.embeddings.position_embedding.weight', 77, d);
  for (let i = 0; i < layers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    f.norm(t, `${p}.layer_norm1`, d);
    f.norm(t, `${p}.layer_norm2`, d);
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) f.linear(t, `${p}.self_attn.${m}`, d, d);
    f.linear(t, `${p}.mlp.fc1`, intermediate, d);
    f.linear(t, `${p}.mlp.fc2`, d, intermediate);
  }
  f.norm(t, 'text_model.final_layer_norm', d);
  return t;
}

function t5Tensors(c: SyntheticConfig, f: ReturnType<typeof filler>): Tensors {
  const t: Tensors = {};
  const { dModel: d, layers, heads, dKv, dFf } = c.t5;
  const inner = heads * dKv;
  f.embedding(t, 'shared.weight', 32128, d);
  for (let i = 0; i < layers; i++) {
    const p = `encoder.block.${i}.layer`;
    for (const m of ['q', 'k', 'v']) f.linear(t, `${p}.0.SelfAttention.${m}`, inner, d, false);
    f.linear(t, `${p}.0.SelfAttention.o`, d, inner, false);
    if (i === 0) f.embedding(t, `${p}.0.SelfAttention.relative_attention_bias.weight`, 32, heads);
    f.norm(t, `${p}.0.layer_norm`, d, false);
    f.linear(t, `${p}.1.DenseReluDense.wi_0`, dFf, d, false);
    f.linear(t, `${p}.1.DenseReluDense.wi_1`, dFf, d, false);
    f.linear(t, `${p}.1.DenseReluDense.wo`, d, dFf, false);
    f.norm(t, `${p}.1.layer_norm`, d, false);
  }
  f.norm(t, 'encoder.final_layer_norm', d, false);
  return t;
}

function vaeTensors(c: SyntheticConfig, f: ReturnType<typeof filler>): Tensors {
  const t: Tensors = {};
  const ch = [...c.vae.channels].reverse(); // decoder order: widest first
  const resnet = (p: string, cin: number, cout: number) => {
    f.norm(t, `${p}.norm1`, cin);
    f.conv(t, `${p}.conv1`, cout, cin, 3);
    f.norm(t, `${p}.norm2`, cout);
    f.conv(t, `${p}.conv2`, cout, cout, 3);
    if (cin !== cout) f.conv(t, `${p}.conv_shortcut`, cout, cin, 1);
  };
  f.conv(t, 'decoder.conv_in', ch[0]!, 16, 3);
  resnet('decoder.mid_block.resnets.0', ch[0]!, ch[0]!);
  f.norm(t, 'decoder.mid_block.attentions.0.group_norm', ch[0]!);
  for (const m of ['to_q', 'to_k', 'to_v', 'to_out.0'])
    f.linear(t, `decoder.mid_block.attentions.0.${m}`, ch[0]!, ch[0]!);
  resnet('decoder.mid_block.resnets.1', ch[0]!, ch[0]!);
  let prev = ch[0]!;
  ch.forEach((cout, k) => {
    for (let j = 0; j <= c.vae.layersPerBlock; j++) {
      resnet(`decoder.up_blocks.${k}.resnets.${j}`, j === 0 ? prev : cout, cout);
    }
    if (k < ch.length - 1) f.conv(t, `decoder.up_blocks.${k}.upsamplers.0.conv`, cout, cout, 3);
    prev = cout;
  });
  f.norm(t, 'decoder.conv_norm_out', ch[ch.length - 1]!);
  f.conv(t, 'decoder.conv_out', 3, ch[ch.length - 1]!, 3);
  return t;
}

/**
 * Writes the repository to `dir` unless it already holds one (the files are deterministic for a config and seed).
 * @param templateDir an existing FLUX repository whose tokenizers and scheduler are copied.
 */
export function writeSyntheticModel(dir: string, c: SyntheticConfig, templateDir: string, seed = 1): string {
  if (existsSync(join(dir, 'model_index.json'))) return dir;
  const f = filler(new Rng(seed));
  const write = (sub: string, file: string, config: object, tensors: Tensors) => {
    mkdirSync(join(dir, sub), { recursive: true });
    writeFileSync(join(dir, sub, 'config.json'), JSON.stringify(config, null, 2));
    writeSafetensors(join(dir, sub, file), tensors, { format: 'pt' });
  };
  for (const sub of ['tokenizer', 'tokenizer_2', 'scheduler'])
    cpSync(join(templateDir, sub), join(dir, sub), { recursive: true });
  cpSync(join(templateDir, 'model_index.json'), join(dir, 'model_index.json.tmp'));
  const tc = c.transformer;
  write(
    'transformer',
    'diffusion_pytorch_model.safetensors',
    {
      _class_name: 'FluxTransformer2DModel',
      attention_head_dim: tc.hidden / tc.heads,
      axes_dims_rope: tc.axes,
      guidance_embeds: true,
      in_channels: 64,
      joint_attention_dim: c.t5.dModel,
      num_attention_heads: tc.heads,
      num_layers: tc.doubleBlocks,
      num_single_layers: tc.singleBlocks,
      patch_size: 1,
      pooled_projection_dim: c.clip.hidden,
    },
    transformerTensors(c, f),
  );
  write(
    'text_encoder',
    'model.safetensors',
    {
      architectures: ['CLIPTextModel'],
      bos_token_id: 0,
      eos_token_id: 2,
      hidden_act: 'quick_gelu',
      hidden_size: c.clip.hidden,
      intermediate_size: c.clip.intermediate,
      layer_norm_eps: 1e-5,
      max_position_embeddings: 77,
      model_type: 'clip_text_model',
      num_attention_heads: c.clip.heads,
      num_hidden_layers: c.clip.layers,
      pad_token_id: 1,
      projection_dim: c.clip.hidden,
      vocab_size: 49408,
    },
    clipTensors(c, f),
  );
  write(
    'text_encoder_2',
    'model.safetensors',
    {
      architectures: ['T5EncoderModel'],
      d_ff: c.t5.dFf,
      d_kv: c.t5.dKv,
      d_model: c.t5.dModel,
      dense_act_fn: 'gelu_new',
      feed_forward_proj: 'gated-gelu',
      is_gated_act: true,
      layer_norm_epsilon: 1e-6,
      model_type: 't5',
      num_heads: c.t5.heads,
      num_layers: c.t5.layers,
      relative_attention_max_distance: 128,
      relative_attention_num_buckets: 32,
      vocab_size: 32128,
    },
    t5Tensors(c, f),
  );
  write(
    'vae',
    'diffusion_pytorch_model.safetensors',
    {
      _class_name: 'AutoencoderKL',
      act_fn: 'silu',
      block_out_channels: c.vae.channels,
      down_block_types: Array(4).fill('DownEncoderBlock2D'),
      in_channels: 3,
      latent_channels: 16,
      layers_per_block: c.vae.layersPerBlock,
      mid_block_add_attention: true,
      norm_num_groups: c.vae.groups,
      out_channels: 3,
      scaling_factor: 0.3611,
      shift_factor: 0.1159,
      up_block_types: Array(4).fill('UpDecoderBlock2D'),
      use_post_quant_conv: false,
      use_quant_conv: false,
    },
    vaeTensors(c, f),
  );
  // model_index.json last: its presence marks a complete repository.
  cpSync(join(dir, 'model_index.json.tmp'), join(dir, 'model_index.json'));
  return dir;
}
