/**
 * @file The FLUX transformer cut after its first double block, for step caching (First-Block-Cache): the `S` engine
 * runs the cheap head every step and the expensive tail only when the first block's output moved enough since the
 * last full step; otherwise it reuses the tail's residual from that step.
 *
 * Head graph — inputs of the full transformer plus `cached_residual` `[B, L, D]`; outputs:
 * - `hidden` `[B, L, D]`, `encoder_hidden` `[B, T, D]`: both streams after `transformer_blocks.0`
 * - `silu_temb` `[B, D]`: SiLU of the conditioning vector (the tail's modulations read it)
 * - `first_residual` `[B, L, D]`: what block 0 added to the image stream (the cache's change detector)
 * - `cached_sample` `[B, L, C]`: norm_out + proj_out of `hidden + cached_residual`, i.e. the step's output when the
 *   tail is skipped (computed speculatively: one LayerNorm and one `D × C` GEMM, negligible next to a block)
 *
 * Tail graph — inputs `hidden`, `encoder_hidden`, `silu_temb`, `rope_cos`, `rope_sin`; outputs `sample`
 * `[B, L, C]` and `residual` `[B, L, D]` (image stream after the last block minus `hidden`).
 *
 * Both are built with the same block builders, options and Linear policy as the full graph (`transformer.ts`), so a
 * tail run followed by nothing else gives exactly the full graph's `sample`.
 */

import {
  type FluxTransformerConfig,
  type ResolvedTransformerConfig,
  resolveTransformerConfig,
  TransformerCompileError,
} from '../../../src/shared/vocabulary/transformer-config.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { layerNorm, silu, split, type WeightReader } from '../onnx/nn.ts';
import { type LinearPolicy, plainLinear } from './linear-policy.ts';
import type { TensorSpec, TransformerGraphOptions } from './transformer.ts';
import { TRANSFORMER_DIMS } from './transformer.ts';
import { doubleBlock, singleBlock } from './transformer-blocks.ts';
import { conditioningEmbedding } from './transformer-embeddings.ts';
import { fusedContext } from './transformer-fused.ts';
import { applyLinear, type BuildContext, FLUX_NORM_EPS, type TransformerContext } from './transformer-layers.ts';

/** Inputs / outputs of a split graph. */
export interface SplitGraphDescriptor {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  linearLayers: string[];
}

function baseContext(
  b: GraphBuilder,
  w: WeightReader,
  cfg: ResolvedTransformerConfig,
  options: TransformerGraphOptions,
): BuildContext {
  const policy: LinearPolicy = options.linearPolicy ?? plainLinear;
  return {
    b,
    w,
    cfg,
    policy,
    fuse: options.fuseProjections ?? false,
    linearLayers: [],
    normWeight: options.normWeightPolicy,
    attentionQueryChunks: options.attentionQueryChunks ?? 1,
  };
}

function declare(b: GraphBuilder, specs: TensorSpec[]): void {
  for (const s of specs) b.input(s.name, s.dtype, s.dims);
}

/** norm_out (AdaLayerNormContinuous, chunks scale then shift) and proj_out on the image stream `[B, L, D]`. */
function finalLayer(ctx: TransformerContext, img: string): string {
  const { b, cfg } = ctx;
  return b.scope('norm_out', () => {
    const emb = applyLinear(ctx, ctx.siluTemb, {
      name: 'norm_out.linear',
      outFeatures: 2 * cfg.dim,
      inFeatures: cfg.dim,
    });
    const [scale, shift] = split(b, b.op('Unsqueeze', [emb, b.constI64([1])]), -1, [cfg.dim, cfg.dim]) as [
      string,
      string,
    ];
    const normed = layerNorm(b, img, cfg.dim, FLUX_NORM_EPS);
    const y = b.op('Add', [b.op('Mul', [normed, b.op('Add', [b.constF32(1), scale])]), shift]);
    return applyLinear(ctx, y, { name: 'proj_out', outFeatures: cfg.outFeatures, inFeatures: cfg.dim }); // [B, L, C]
  });
}

function seqSplitOf(b: GraphBuilder, c: string, x: string): string {
  const len = (v: string) => b.op('Shape', [v], { start: 1, end: 2 });
  return b.op('Concat', [len(c), len(x)], { axis: 0 }); // [T, L]
}

/** Builds the head graph (see the file header) into `b`. */
export function buildTransformerHead(
  b: GraphBuilder,
  w: WeightReader,
  config: FluxTransformerConfig,
  options: TransformerGraphOptions = {},
): SplitGraphDescriptor {
  const cfg = resolveTransformerConfig(config);
  if (cfg.numLayers < 1)
    throw new TransformerCompileError('config.num_layers', 'step caching needs at least one double block');
  const { batch: B, image: L, text: T, joint: S } = TRANSFORMER_DIMS;
  const inputs: TensorSpec[] = [
    { name: 'hidden_states', dtype: 'float32', dims: [B, L, cfg.inChannels] },
    { name: 'encoder_hidden_states', dtype: 'float32', dims: [B, T, cfg.jointAttentionDim] },
    { name: 'pooled_projections', dtype: 'float32', dims: [B, cfg.pooledProjectionDim] },
    { name: 'timestep', dtype: 'float32', dims: [B] },
    ...(cfg.guidanceEmbeds ? [{ name: 'guidance', dtype: 'float32' as const, dims: [B] }] : []),
    { name: 'rope_cos', dtype: 'float32', dims: [S, cfg.headDim] },
    { name: 'rope_sin', dtype: 'float32', dims: [S, cfg.headDim] },
    { name: 'cached_residual', dtype: 'float32', dims: [B, L, cfg.dim] },
  ];
  declare(b, inputs);
  const base = baseContext(b, w, cfg, options);
  const x0 = applyLinear(base, 'hidden_states', {
    name: 'x_embedder',
    outFeatures: cfg.dim,
    inFeatures: cfg.inChannels,
  });
  const temb = conditioningEmbedding(base, {
    timestep: 'timestep',
    guidance: cfg.guidanceEmbeds ? 'guidance' : undefined,
    pooled: 'pooled_projections',
  });
  const c0 = applyLinear(base, 'encoder_hidden_states', {
    name: 'context_embedder',
    outFeatures: cfg.dim,
    inFeatures: cfg.jointAttentionDim,
  });
  const siluTemb = silu(b, temb);
  const ctx: TransformerContext = {
    ...base,
    ropeCos: 'rope_cos',
    ropeSin: 'rope_sin',
    seqSplit: seqSplitOf(b, c0, x0),
    siluTemb,
    ...fusedContext(base, siluTemb, 'rope_cos', 'rope_sin', options, { double: [0], single: [], normOut: true }),
  };
  const { x, c } = doubleBlock(ctx, 0, x0, c0);
  const cached = finalLayer(ctx, b.op('Add', [x, 'cached_residual']));
  const outputs: TensorSpec[] = [
    { name: 'hidden', dtype: 'float32', dims: [B, L, cfg.dim] },
    { name: 'encoder_hidden', dtype: 'float32', dims: [B, T, cfg.dim] },
    { name: 'silu_temb', dtype: 'float32', dims: [B, cfg.dim] },
    { name: 'first_residual', dtype: 'float32', dims: [B, L, cfg.dim] },
    { name: 'cached_sample', dtype: 'float32', dims: [B, L, cfg.outFeatures] },
  ];
  const values = [x, c, siluTemb, b.op('Sub', [x, x0]), cached];
  for (const [i, o] of outputs.entries()) b.output(values[i]!, o.name, o.dtype, o.dims);
  return { inputs, outputs, linearLayers: ctx.linearLayers };
}

/** Builds the tail graph (see the file header) into `b`. */
export function buildTransformerTail(
  b: GraphBuilder,
  w: WeightReader,
  config: FluxTransformerConfig,
  options: TransformerGraphOptions = {},
): SplitGraphDescriptor {
  const cfg = resolveTransformerConfig(config);
  const { batch: B, image: L, text: T, joint: S } = TRANSFORMER_DIMS;
  const inputs: TensorSpec[] = [
    { name: 'hidden', dtype: 'float32', dims: [B, L, cfg.dim] },
    { name: 'encoder_hidden', dtype: 'float32', dims: [B, T, cfg.dim] },
    { name: 'silu_temb', dtype: 'float32', dims: [B, cfg.dim] },
    { name: 'rope_cos', dtype: 'float32', dims: [S, cfg.headDim] },
    { name: 'rope_sin', dtype: 'float32', dims: [S, cfg.headDim] },
  ];
  declare(b, inputs);
  const base = baseContext(b, w, cfg, options);
  const double = Array.from({ length: cfg.numLayers - 1 }, (_, i) => i + 1);
  const single = Array.from({ length: cfg.numSingleLayers }, (_, j) => j);
  const ctx: TransformerContext = {
    ...base,
    ropeCos: 'rope_cos',
    ropeSin: 'rope_sin',
    seqSplit: seqSplitOf(b, 'encoder_hidden', 'hidden'),
    siluTemb: 'silu_temb',
    ...fusedContext(base, 'silu_temb', 'rope_cos', 'rope_sin', options, { double, single, normOut: true }),
  };
  let x = 'hidden';
  let c = 'encoder_hidden';
  for (const i of double) ({ x, c } = doubleBlock(ctx, i, x, c));
  let z = b.op('Concat', [c, x], { axis: 1 }); // [B, S, D], text first
  for (const j of single) z = singleBlock(ctx, j, z);
  const [, img] = b.node('Split', [z, ctx.seqSplit], { axis: 1 }, { outputs: 2 }) as [string, string]; // [B, L, D]
  const outputs: TensorSpec[] = [
    { name: 'sample', dtype: 'float32', dims: [B, L, cfg.outFeatures] },
    { name: 'residual', dtype: 'float32', dims: [B, L, cfg.dim] },
  ];
  b.output(finalLayer(ctx, img), 'sample', 'float32', outputs[0]!.dims);
  b.output(b.op('Sub', [img, 'hidden']), 'residual', 'float32', outputs[1]!.dims);
  return { inputs, outputs, linearLayers: ctx.linearLayers };
}
