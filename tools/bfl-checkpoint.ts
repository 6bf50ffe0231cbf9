/**
 * @file The inverse of the BFL key map, for tests and the CUDA engine's fixtures (never for the server): builds
 * BFL-format checkpoints from the embedded diffusers flux-tiny, by hand-written rules (fuse q/k/v, linear1 = [q; k; v; mlp], swap the final modulation halves, rename, reverse VAE
 * up blocks), so the loader's forward mapping is checked against an independent statement of docs/FLUX_SPEC.md §5.7 / §6.
 */
import { cpSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { FLUX_TINY_DIR as MODEL_DIR } from '../src/config.ts';
import { openSafetensors } from '../src/shared/weights/safetensors.ts';
import { type FloatTensorInput, writeSafetensors } from '../src/shared/weights/safetensors-writer.ts';

/** A float32 tensor held in memory. */
export interface Tensor {
  shape: number[];
  data: Float32Array;
}

/** Every tensor of a diffusers component of the embedded model, as float32. */
export function loadDiffusers(component: 'transformer' | 'vae'): Map<string, Tensor> {
  const f = openSafetensors(join(MODEL_DIR, component, 'diffusion_pytorch_model.safetensors'));
  const out = new Map(f.names().map((n) => [n, { shape: [...f.info(n).shape], data: f.readF32(n) }]));
  f.close();
  return out;
}

function get(t: Map<string, Tensor>, name: string): Tensor {
  const v = t.get(name);
  if (!v) throw new Error(`fixture: missing ${name}`);
  return v;
}

/** Concatenates tensors along dim 0. */
function catRows(parts: Tensor[]): Tensor {
  const rows = parts.reduce((a, p) => a + p.shape[0]!, 0);
  const data = new Float32Array(parts.reduce((a, p) => a + p.data.length, 0));
  let at = 0;
  for (const p of parts) {
    data.set(p.data, at);
    at += p.data.length;
  }
  return { shape: [rows, ...parts[0]!.shape.slice(1)], data };
}

/** Swaps the two row halves of a `[2h, ...]` tensor. */
function swapHalves(t: Tensor): Tensor {
  const half = t.data.length / 2;
  const data = new Float32Array(t.data.length);
  data.set(t.data.subarray(half), 0);
  data.set(t.data.subarray(0, half), half);
  return { shape: t.shape, data };
}

function countBlocks(names: Iterable<string>, prefix: string): number {
  let n = 0;
  for (const name of names)
    if (name.startsWith(prefix)) n = Math.max(n, Number(name.slice(prefix.length).split('.')[0]) + 1);
  return n;
}

/** Diffusers FluxTransformer2DModel tensors → BFL flux tensors. */
export function transformerToBfl(d: Map<string, Tensor>): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const wb = (bfl: string, diff: string) => {
    for (const p of ['weight', 'bias']) out.set(`${bfl}.${p}`, get(d, `${diff}.${p}`));
  };
  wb('img_in', 'x_embedder');
  wb('txt_in', 'context_embedder');
  wb('time_in.in_layer', 'time_text_embed.timestep_embedder.linear_1');
  wb('time_in.out_layer', 'time_text_embed.timestep_embedder.linear_2');
  wb('vector_in.in_layer', 'time_text_embed.text_embedder.linear_1');
  wb('vector_in.out_layer', 'time_text_embed.text_embedder.linear_2');
  wb('guidance_in.in_layer', 'time_text_embed.guidance_embedder.linear_1');
  wb('guidance_in.out_layer', 'time_text_embed.guidance_embedder.linear_2');
  wb('final_layer.linear', 'proj_out');
  for (const p of ['weight', 'bias']) {
    out.set(`final_layer.adaLN_modulation.1.${p}`, swapHalves(get(d, `norm_out.linear.${p}`)));
  }
  for (let i = 0; i < countBlocks(d.keys(), 'transformer_blocks.'); i++) {
    const b = `double_blocks.${i}`;
    const t = `transformer_blocks.${i}`;
    for (const p of ['weight', 'bias']) {
      const qkv = (names: string[]) => catRows(names.map((n) => get(d, `${t}.attn.${n}.${p}`)));
      out.set(`${b}.img_attn.qkv.${p}`, qkv(['to_q', 'to_k', 'to_v']));
      out.set(`${b}.txt_attn.qkv.${p}`, qkv(['add_q_proj', 'add_k_proj', 'add_v_proj']));
    }
    wb(`${b}.img_mod.lin`, `${t}.norm1.linear`);
    wb(`${b}.txt_mod.lin`, `${t}.norm1_context.linear`);
    wb(`${b}.img_attn.proj`, `${t}.attn.to_out.0`);
    wb(`${b}.txt_attn.proj`, `${t}.attn.to_add_out`);
    wb(`${b}.img_mlp.0`, `${t}.ff.net.0.proj`);
    wb(`${b}.img_mlp.2`, `${t}.ff.net.2`);
    wb(`${b}.txt_mlp.0`, `${t}.ff_context.net.0.proj`);
    wb(`${b}.txt_mlp.2`, `${t}.ff_context.net.2`);
    out.set(`${b}.img_attn.norm.query_norm.scale`, get(d, `${t}.attn.norm_q.weight`));
    out.set(`${b}.img_attn.norm.key_norm.scale`, get(d, `${t}.attn.norm_k.weight`));
    out.set(`${b}.txt_attn.norm.query_norm.scale`, get(d, `${t}.attn.norm_added_q.weight`));
    out.set(`${b}.txt_attn.norm.key_norm.scale`, get(d, `${t}.attn.norm_added_k.weight`));
  }
  for (let i = 0; i < countBlocks(d.keys(), 'single_transformer_blocks.'); i++) {
    const b = `single_blocks.${i}`;
    const t = `single_transformer_blocks.${i}`;
    for (const p of ['weight', 'bias']) {
      const parts = ['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp'].map((n) => get(d, `${t}.${n}.${p}`));
      out.set(`${b}.linear1.${p}`, catRows(parts));
    }
    wb(`${b}.linear2`, `${t}.proj_out`);
    wb(`${b}.modulation.lin`, `${t}.norm.linear`);
    out.set(`${b}.norm.query_norm.scale`, get(d, `${t}.attn.norm_q.weight`));
    out.set(`${b}.norm.key_norm.scale`, get(d, `${t}.attn.norm_k.weight`));
  }
  return out;
}

/** Diffusers AutoencoderKL tensors → BFL `ae.safetensors` tensors (decoder up blocks reversed, encoder kept). */
export function vaeToBfl(d: Map<string, Tensor>): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const numUp = countBlocks(d.keys(), 'decoder.up_blocks.');
  const attn: Record<string, string> = { group_norm: 'norm', to_q: 'q', to_k: 'k', to_v: 'v', 'to_out.0': 'proj_out' };
  const attnRe = /^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)$/;
  for (const [name, t] of d) {
    const a = attnRe.exec(name);
    if (a) {
      // BFL's attention projections are 1×1 convs: [C, C] → [C, C, 1, 1].
      const shape = t.shape.length === 2 ? [...t.shape, 1, 1] : t.shape;
      out.set(`${a[1]}.mid.attn_1.${attn[a[2]!]}.${a[3]}`, { shape, data: t.data });
      continue;
    }
    let bfl = name
      .replace(
        /^(encoder|decoder)\.mid_block\.resnets\.(\d)\./,
        (_, c: string, j: string) => `${c}.mid.block_${Number(j) + 1}.`,
      )
      .replace(/^(encoder|decoder)\.conv_norm_out\./, '$1.norm_out.')
      .replace(/\.conv_shortcut\./, '.nin_shortcut.');
    const up = /^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$/.exec(bfl);
    if (up) {
      const level = numUp - 1 - Number(up[1]);
      bfl =
        up[2] === 'resnets' ? `decoder.up.${level}.block.${up[3]}.${up[4]}` : `decoder.up.${level}.upsample.${up[4]}`;
    }
    const down = /^encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)$/.exec(bfl);
    if (down) {
      bfl =
        down[2] === 'resnets'
          ? `encoder.down.${down[1]}.block.${down[3]}.${down[4]}`
          : `encoder.down.${down[1]}.downsample.${down[4]}`;
    }
    out.set(bfl, t);
  }
  return out;
}

/** Writes in-memory tensors as a safetensors file of one float dtype, with an optional key prefix. */
export function writeTensors(
  path: string,
  t: Map<string, Tensor>,
  dtype: FloatTensorInput['dtype'],
  prefix = '',
): void {
  const tensors: Record<string, FloatTensorInput> = {};
  for (const [name, v] of t) tensors[prefix + name] = { dtype, shape: v.shape, data: v.data };
  writeSafetensors(path, tensors);
}

/** Writes the embedded model's transformer and VAE as BFL `flux1-dev.safetensors` + `ae.safetensors` into `dir`. */
export function writeBflCheckpoints(dir: string, dtype: FloatTensorInput['dtype']): void {
  writeTensors(join(dir, 'flux1-dev.safetensors'), transformerToBfl(loadDiffusers('transformer')), dtype);
  writeTensors(join(dir, 'ae.safetensors'), vaeToBfl(loadDiffusers('vae')), dtype);
}

/**
 * Makes `dir` a FLUX repository in BFL's single-file form, as the FLUX.1-dev repository ships it: the embedded model's
 * text encoders, tokenizers and scheduler (copied), its transformer and VAE as `flux1-dev.safetensors` +
 * `ae.safetensors`, and only the transformer/VAE `config.json` (the tiny head size needs axes_dims_rope, which shapes
 * cannot tell).
 */
export function writeBflRepo(dir: string, dtype: FloatTensorInput['dtype']): void {
  for (const sub of ['text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'scheduler', 'model_index.json']) {
    cpSync(join(MODEL_DIR, sub), join(dir, sub), { recursive: true });
  }
  for (const c of ['transformer', 'vae']) {
    mkdirSync(join(dir, c), { recursive: true });
    cpSync(join(MODEL_DIR, c, 'config.json'), join(dir, c, 'config.json'));
  }
  writeBflCheckpoints(dir, dtype);
}
