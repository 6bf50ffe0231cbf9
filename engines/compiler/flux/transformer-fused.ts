/**
 * @file The `XL` engine's graph rewrites of the FLUX transformer: same values as the reference graph within float
 * rounding, fewer and faster ORT CPU kernels.
 *
 * - Attention through `com.microsoft` contrib ops, all in token layout `[B, N, D]` (no head transposes):
 *   QK RMSNorm as `SimplifiedLayerNormalization` over `[B, N, H, Dh]`, interleaved RoPE as `RotaryEmbedding`
 *   (`interleaved=1`, half-width tables `[S, Dh/2]` sliced once from the `[S, Dh]` inputs, whose columns repeat each
 *   frequency twice), and the softmax core as `MultiHeadAttention`. Measured on the synthetic 768 config (S 384, 2
 *   threads): 46 → 32-38 ms per attention, relative difference 4e-7.
 * - GELU(tanh) as the contrib `FastGelu` kernel (same formula; see `gelu` in `transformer-layers.ts`).
 * - Modulation precomputation: every AdaLayerNorm Linear (`norm1.linear`, `norm1_context.linear`, `norm.linear`,
 *   `norm_out.linear`) reads the same `SiLU(temb)` `[B, D]`, so they are one fused layer (`modulation`, one GEMM of
 *   width Σ out) computed before the blocks; the blocks pick their slices by name (`BuildContext.precomputed`).
 * - Modulation as an input (`modulationInput`, the `XL` engine): the modulations depend only on the timestep, guidance
 *   and pooled embedding, so the pipeline computes them for every step of a sample at once (one GEMM over
 *   `[steps·B, D]` rows, the component graph of `transformer-modulation.ts`) and the transformer graph takes the
 *   fused `[B, Σ out]` vector as its input {@link MODULATION_INPUT} instead of timestep, guidance and pooled.
 *
 * {@link jointAttention} is also the reference path (plain ONNX ops) when the context has no `fusedAttention`.
 */

import type { ResolvedTransformerConfig } from '../../../src/shared/vocabulary/transformer-config.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { reshape, split } from '../onnx/nn.ts';
import { readChecked, readLinearChecked } from './checked-weights.ts';
import { fuseLinearRows } from './linear-policy.ts';
import { applyRope, attend, qkNorm, toHeads } from './transformer-attention.ts';
import type { BuildContext, LinearSpec, TransformerContext } from './transformer-layers.ts';

const MS = 'com.microsoft';
/** RMSNorm epsilon of the QK norms (as in `transformer-attention.ts`). */
const QK_NORM_EPS = 1e-6;

/** One stream entering joint attention, in token layout `[B, N, D]`, with its QK-norm module names. */
export interface AttentionStream {
  q: string;
  k: string;
  v: string;
  normQ: string;
  normK: string;
}

/** The extra graph values contrib attention needs; computed once per graph from the `[S, Dh]` RoPE inputs. */
export function fusedAttentionInputs(
  b: GraphBuilder,
  cfg: ResolvedTransformerConfig,
  ropeCos: string,
  ropeSin: string,
) {
  b.useDomain(MS, 1);
  // Columns 0, 2, 4, …: the table repeats each frequency twice, RotaryEmbedding wants each once.
  const half = (t: string) =>
    b.op('Slice', [t, b.constI64([0]), b.constI64([cfg.headDim]), b.constI64([1]), b.constI64([2])]);
  return { cosHalf: half(ropeCos), sinHalf: half(ropeSin), positions: b.constI64([0]) };
}

/**
 * Softmax attention over the streams concatenated along the tokens (in the given order, text first), with QK RMSNorm
 * and RoPE; returns `[B, S, D]` in diffusers' head-flattened order.
 */
export function jointAttention(ctx: TransformerContext, streams: readonly AttentionStream[]): string {
  const { b } = ctx;
  if (!ctx.fusedAttention) {
    const heads = streams.map((s) => ({
      q: qkNorm(ctx, toHeads(ctx, s.q), s.normQ),
      k: qkNorm(ctx, toHeads(ctx, s.k), s.normK),
      v: toHeads(ctx, s.v),
    })); // [B, H, N, Dh] each
    const cat = (xs: string[]) => (xs.length === 1 ? xs[0]! : b.op('Concat', xs, { axis: 2 }));
    const q = applyRope(ctx, cat(heads.map((h) => h.q)));
    const k = applyRope(ctx, cat(heads.map((h) => h.k)));
    return attend(ctx, q, k, cat(heads.map((h) => h.v)));
  }
  const { cosHalf, sinHalf, positions } = ctx.fusedAttention;
  const { heads, headDim } = ctx.cfg;
  const cat = (xs: string[]) => (xs.length === 1 ? xs[0]! : b.op('Concat', xs, { axis: 1 }));
  const rope = (x: string) =>
    b.op('RotaryEmbedding', [x, positions, cosHalf, sinHalf], { interleaved: 1, num_heads: heads }, MS);
  const q = rope(cat(streams.map((s) => fusedQkNorm(ctx, s.q, s.normQ)))); // [B, S, D]
  const k = rope(cat(streams.map((s) => fusedQkNorm(ctx, s.k, s.normK))));
  const v = cat(streams.map((s) => s.v));
  return b.op('MultiHeadAttention', [q, k, v], { num_heads: heads, scale: { float: 1 / Math.sqrt(headDim) } }, MS);
}

/** RMSNorm over each head of `x` `[B, N, D]` with `<module>.weight` `[Dh]`, back in `[B, N, D]`. */
function fusedQkNorm(ctx: TransformerContext, x: string, module: string): string {
  const { b, cfg } = ctx;
  const weight = readChecked(ctx.w, `${module}.weight`, [cfg.headDim]);
  const perHead = reshape(b, x, [0, 0, cfg.heads, cfg.headDim]); // [B, N, H, Dh]
  const attrs = { axis: -1, epsilon: { float: QK_NORM_EPS }, stash_type: 1 };
  let y: string;
  if (ctx.normWeight) {
    // LoRA engines feed the weight as a graph input: normalise with unit scale, then multiply.
    const unit = b.op(
      'SimplifiedLayerNormalization',
      [perHead, b.constF32(new Array(cfg.headDim).fill(1), [cfg.headDim])],
      attrs,
    );
    y = b.op('Mul', [unit, ctx.normWeight(b, module, weight)]);
  } else {
    y = b.op('SimplifiedLayerNormalization', [perHead, b.f32(`${module}.weight`, weight, [cfg.headDim])], attrs);
  }
  return reshape(b, y, [0, 0, -1]);
}

/** Name of the fused modulation layer (its `parts` are the diffusers modulation Linears). */
export const MODULATION_LAYER = 'modulation';

/** The modulation Linears of the given blocks, in graph order. */
export function modulationSpecs(
  cfg: ResolvedTransformerConfig,
  blocks: { double: readonly number[]; single: readonly number[]; normOut: boolean },
): LinearSpec[] {
  const d = cfg.dim;
  const specs: LinearSpec[] = [];
  for (const i of blocks.double) {
    specs.push({ name: `transformer_blocks.${i}.norm1.linear`, outFeatures: 6 * d, inFeatures: d });
    specs.push({ name: `transformer_blocks.${i}.norm1_context.linear`, outFeatures: 6 * d, inFeatures: d });
  }
  for (const j of blocks.single)
    specs.push({ name: `single_transformer_blocks.${j}.norm.linear`, outFeatures: 3 * d, inFeatures: d });
  if (blocks.normOut) specs.push({ name: 'norm_out.linear', outFeatures: 2 * d, inFeatures: d });
  return specs;
}

/**
 * Computes every modulation Linear of `specs` from `siluTemb` `[B, D]` with one GEMM (`[B, Σ out]`, split back per
 * layer) through the context's policy, so quantisation plans see it as the layer {@link MODULATION_LAYER}.
 * @returns module name → its output `[B, out]`, for `BuildContext.precomputed`.
 */
export function precomputeModulation(
  ctx: BuildContext,
  siluTemb: string,
  specs: readonly LinearSpec[],
): Map<string, string> {
  return splitModulation(ctx, fuseModulation(ctx, siluTemb, specs), specs);
}

/** The one GEMM of {@link precomputeModulation}, unsplit: `siluTemb` `[B, D]` → `[B, Σ out]` in `specs` order. */
export function fuseModulation(ctx: BuildContext, siluTemb: string, specs: readonly LinearSpec[]): string {
  const fused = fuseLinearRows(
    specs.map((s) => ({ name: s.name, weights: readLinearChecked(ctx.w, s.name, s.outFeatures, s.inFeatures) })),
  );
  ctx.linearLayers.push(MODULATION_LAYER);
  return ctx.policy(ctx.b, siluTemb, { name: MODULATION_LAYER, weights: fused.weights, parts: fused.parts });
}

/** Name of the transformer graph input holding the fused modulation vector `[B, Σ out]` (`modulationInput`). */
export const MODULATION_INPUT = 'modulation';

/** Σ out of the modulation Linears `specs`: the width of the fused modulation vector. */
export function modulationWidth(specs: readonly LinearSpec[]): number {
  return specs.reduce((n, s) => n + s.outFeatures, 0);
}

/** Splits a fused modulation vector `[B, Σ out]` back per Linear of `specs` (module name → `[B, out]`). */
export function splitModulation(ctx: BuildContext, fused: string, specs: readonly LinearSpec[]): Map<string, string> {
  const outs = split(
    ctx.b,
    fused,
    -1,
    specs.map((s) => s.outFeatures),
  );
  return new Map(specs.map((s, i) => [s.name, outs[i]!]));
}

/** The XL switches of the transformer graph options. */
export interface FusedGraphOptions {
  /** Contrib-op attention and FastGelu (the `com.microsoft` CPU kernels), see the file header. @default false */
  fusedAttention?: boolean;
  /** One GEMM for every modulation Linear, see the file header. @default false */
  precomputeModulation?: boolean;
  /**
   * Take the fused modulation vector as the graph input {@link MODULATION_INPUT} `[B, Σ out]` instead of timestep,
   * guidance and pooled (computed by the `transformer-modulation.ts` graph), see the file header. @default false
   */
  modulationInput?: boolean;
}

/**
 * The context fields the XL options add, for a graph holding the given blocks (the step-cache head and tail graphs
 * hold a subset); spread into the `TransformerContext`.
 */
export function fusedContext(
  base: BuildContext,
  siluTemb: string,
  ropeCos: string,
  ropeSin: string,
  options: FusedGraphOptions,
  blocks: { double: readonly number[]; single: readonly number[]; normOut: boolean },
): Pick<TransformerContext, 'fusedAttention' | 'precomputed' | 'fastGelu'> {
  return {
    ...(options.fusedAttention ? { fastGelu: true } : {}),
    ...(options.fusedAttention ? { fusedAttention: fusedAttentionInputs(base.b, base.cfg, ropeCos, ropeSin) } : {}),
    ...(options.modulationInput
      ? { precomputed: splitModulation(base, MODULATION_INPUT, modulationSpecs(base.cfg, blocks)) }
      : options.precomputeModulation
        ? { precomputed: precomputeModulation(base, siluTemb, modulationSpecs(base.cfg, blocks)) }
        : {}),
  };
}

/** Every block of `cfg` (the whole transformer). */
export function allBlocks(cfg: ResolvedTransformerConfig) {
  return {
    double: Array.from({ length: cfg.numLayers }, (_, i) => i),
    single: Array.from({ length: cfg.numSingleLayers }, (_, j) => j),
    normOut: true,
  };
}
