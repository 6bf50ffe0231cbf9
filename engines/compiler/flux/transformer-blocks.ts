/**
 * @file The two block types of the FLUX transformer (docs/FLUX_SPEC.md §5.5–5.6), as diffusers' `FluxTransformerBlock` and
 * `FluxSingleTransformerBlock` compute them in float32.
 *
 * Shape letters: B batch, L image tokens, T text tokens, S = T + L, D model width, H heads, Dh head dim.
 */

import { jointAttention } from './transformer-fused.ts';
import {
  applyLinear,
  applyLinearGroup,
  feedForward,
  gatedResidual,
  gelu,
  type LinearSpec,
  modulate,
  modulationChunks,
  type TransformerContext,
} from './transformer-layers.ts';

/** Fused-layer names used when `fuseProjections` is on (the diffusers `fuse_projections` names where one exists). */
export const FUSED_NAMES = {
  /** Both double-block modulations (`norm1.linear` rows, then `norm1_context.linear` rows). */
  doubleModulation: (i: number) => `transformer_blocks.${i}.norm1_joint.linear`,
  doubleQkv: (i: number) => `transformer_blocks.${i}.attn.to_qkv`,
  doubleAddedQkv: (i: number) => `transformer_blocks.${i}.attn.to_added_qkv`,
  /** Single block `attn.to_q`, `attn.to_k`, `attn.to_v`, `proj_mlp` rows (BFL's `linear1`). */
  singleQkvMlp: (j: number) => `single_transformer_blocks.${j}.to_qkv_mlp`,
} as const;

function square(ctx: TransformerContext, name: string): LinearSpec {
  return { name, outFeatures: ctx.cfg.dim, inFeatures: ctx.cfg.dim };
}

/**
 * One double-stream block `transformer_blocks.<i>`: image tokens `x` `[B, L, D]` and text tokens `ctx` `[B, T, D]`
 * attend jointly (text first) and are updated separately.
 * @returns the new `{ x, c }` (image, text).
 */
export function doubleBlock(ctx: TransformerContext, i: number, x: string, c: string): { x: string; c: string } {
  const { b, cfg } = ctx;
  const p = `transformer_blocks.${i}`;
  return b.scope(p, () => {
    // norm1 / norm1_context (AdaLayerNormZero): [B, 6D] each, chunks shift, scale, gate (msa), shift, scale, gate (mlp).
    const mod = (n: string): LinearSpec => ({
      name: `${p}.${n}.linear`,
      outFeatures: 6 * cfg.dim,
      inFeatures: cfg.dim,
    });
    const [imgEmb, txtEmb] = applyLinearGroup(ctx, ctx.siluTemb, FUSED_NAMES.doubleModulation(i), [
      mod('norm1'),
      mod('norm1_context'),
    ]) as [string, string];
    const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = modulationChunks(ctx, imgEmb, 6) as Six;
    const [cShiftMsa, cScaleMsa, cGateMsa, cShiftMlp, cScaleMlp, cGateMlp] = modulationChunks(ctx, txtEmb, 6) as Six;

    const xn = modulate(ctx, x, shiftMsa, scaleMsa); // [B, L, D]
    const cn = modulate(ctx, c, cShiftMsa, cScaleMsa); // [B, T, D]
    const [q, k, v] = applyLinearGroup(ctx, xn, FUSED_NAMES.doubleQkv(i), [
      square(ctx, `${p}.attn.to_q`),
      square(ctx, `${p}.attn.to_k`),
      square(ctx, `${p}.attn.to_v`),
    ]) as [string, string, string]; // [B, L, D]
    const [cq, ck, cv] = applyLinearGroup(ctx, cn, FUSED_NAMES.doubleAddedQkv(i), [
      square(ctx, `${p}.attn.add_q_proj`),
      square(ctx, `${p}.attn.add_k_proj`),
      square(ctx, `${p}.attn.add_v_proj`),
    ]) as [string, string, string]; // [B, T, D]

    // Joint sequence, text first (the RoPE tables are laid out the same way).
    const attn = jointAttention(ctx, [
      { q: cq, k: ck, v: cv, normQ: `${p}.attn.norm_added_q`, normK: `${p}.attn.norm_added_k` },
      { q, k, v, normQ: `${p}.attn.norm_q`, normK: `${p}.attn.norm_k` },
    ]); // [B, S, D]
    const [cAttn, xAttn] = b.node('Split', [attn, ctx.seqSplit], { axis: 1 }, { outputs: 2 }) as [string, string];

    let xo = gatedResidual(ctx, x, gateMsa, applyLinear(ctx, xAttn, square(ctx, `${p}.attn.to_out.0`)));
    xo = gatedResidual(ctx, xo, gateMlp, feedForward(ctx, modulate(ctx, xo, shiftMlp, scaleMlp), `${p}.ff`));
    let co = gatedResidual(ctx, c, cGateMsa, applyLinear(ctx, cAttn, square(ctx, `${p}.attn.to_add_out`)));
    co = gatedResidual(ctx, co, cGateMlp, feedForward(ctx, modulate(ctx, co, cShiftMlp, cScaleMlp), `${p}.ff_context`));
    return { x: xo, c: co };
  });
}

type Six = [string, string, string, string, string, string];

/**
 * One single-stream block `single_transformer_blocks.<j>` on the joint sequence `z` `[B, S, D]` (text first):
 * parallel attention and MLP from one modulated input, concatenated into `proj_out` and added through the gate.
 */
export function singleBlock(ctx: TransformerContext, j: number, z: string): string {
  const { b, cfg } = ctx;
  const p = `single_transformer_blocks.${j}`;
  return b.scope(p, () => {
    // norm (AdaLayerNormZeroSingle): [B, 3D] → shift, scale, gate.
    const emb = applyLinear(ctx, ctx.siluTemb, {
      name: `${p}.norm.linear`,
      outFeatures: 3 * cfg.dim,
      inFeatures: cfg.dim,
    });
    const [shift, scale, gate] = modulationChunks(ctx, emb, 3) as [string, string, string];
    const zn = modulate(ctx, z, shift, scale); // [B, S, D]

    const [q, k, v, mlp] = applyLinearGroup(ctx, zn, FUSED_NAMES.singleQkvMlp(j), [
      square(ctx, `${p}.attn.to_q`),
      square(ctx, `${p}.attn.to_k`),
      square(ctx, `${p}.attn.to_v`),
      { name: `${p}.proj_mlp`, outFeatures: cfg.mlpDim, inFeatures: cfg.dim },
    ]) as [string, string, string, string];
    const attn = jointAttention(ctx, [{ q, k, v, normQ: `${p}.attn.norm_q`, normK: `${p}.attn.norm_k` }]); // [B, S, D]

    // proj_out's input columns: attention first, then the MLP activations: [B, S, D + 4D].
    const cat = b.op('Concat', [attn, gelu(ctx, mlp)], { axis: -1 });
    const out = applyLinear(ctx, cat, {
      name: `${p}.proj_out`,
      outFeatures: cfg.dim,
      inFeatures: cfg.dim + cfg.mlpDim,
    });
    return gatedResidual(ctx, z, gate, out);
  });
}
