/**
 * @file Shared state and small layers of the FLUX transformer graph: the build context, Linear emission through the
 * {@link LinearPolicy} (plain or fused), adaptive-LayerNorm modulation and the feed-forward network.
 *
 * Shape letters: B batch, L image tokens, T text tokens, S = T + L, D model width, H heads, Dh head dim.
 */

import type { ResolvedTransformerConfig } from '../../../src/shared/vocabulary/transformer-config.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { geluTanh, layerNorm, split, type WeightReader } from '../onnx/nn.ts';
import { readLinearChecked } from './checked-weights.ts';
import { fuseLinearRows, type LinearPolicy } from './linear-policy.ts';

/** LayerNorm epsilon of every norm in the FLUX transformer (no affine parameters). */
export const FLUX_NORM_EPS = 1e-6;

/** What Linear emission needs while one transformer graph is built. */
export interface BuildContext {
  readonly b: GraphBuilder;
  readonly w: WeightReader;
  readonly cfg: ResolvedTransformerConfig;
  readonly policy: LinearPolicy;
  /** Build fused projections (one GEMM per group of Linears sharing an input). */
  readonly fuse: boolean;
  /** Names the policy was called with, in call order (the descriptor's `linearLayers`). */
  readonly linearLayers: string[];
  /**
   * Optional hook for the QK-norm weights: returns the value to multiply by instead of an initializer (LoRA engines
   * make them graph inputs, since BFL Control LoRAs replace them). Absent: the weight is an initializer.
   */
  readonly normWeight?: (b: GraphBuilder, module: string, weight: Float32Array) => string;
  /**
   * XL: outputs of Linears already computed elsewhere, by module name (all modulation Linears read `SiLU(temb)` and
   * are computed up front by one GEMM, see `precomputeModulation`). {@link applyLinear} returns these as is.
   */
  readonly precomputed?: ReadonlyMap<string, string>;
  /** XL: GELU(tanh) as ORT's `com.microsoft` FastGelu kernel (same formula), see {@link gelu}. */
  readonly fastGelu?: boolean;
  /** Query blocks of the reference attention (`sdpaChunked` in `attend`). @default 1 */
  readonly attentionQueryChunks?: number;
}

/** Everything the block builders share: the {@link BuildContext} plus graph values computed once up front. */
export interface TransformerContext extends BuildContext {
  /** RoPE tables `[S, Dh]` (graph inputs). */
  readonly ropeCos: string;
  readonly ropeSin: string;
  /** int64 `[2]` = `[T, L]`, read from the inputs' shapes at run time, to split the joint sequence. */
  readonly seqSplit: string;
  /** `SiLU(temb)` `[B, D]`: every modulation and norm_out consume it, so it is computed once. */
  readonly siluTemb: string;
  /**
   * XL: contrib-op attention (`RotaryEmbedding` + `MultiHeadAttention`, see `transformer-fused.ts`) with the
   * half-width RoPE tables `[S, Dh/2]` and the position offset it needs; absent for the reference graph.
   */
  readonly fusedAttention?: { cosHalf: string; sinHalf: string; positions: string };
}

/** A Linear of the checkpoint: diffusers module name and its `[out, in]` size. */
export interface LinearSpec {
  name: string;
  outFeatures: number;
  inFeatures: number;
}

/** Emits one Linear `module` (`[..., in]` → `[..., out]`) through the policy, after checking its weight shapes. */
export function applyLinear(ctx: BuildContext, x: string, spec: LinearSpec): string {
  const pre = ctx.precomputed?.get(spec.name);
  if (pre) return pre;
  const weights = readLinearChecked(ctx.w, spec.name, spec.outFeatures, spec.inFeatures);
  ctx.linearLayers.push(spec.name);
  return ctx.policy(ctx.b, x, { name: spec.name, weights });
}

/**
 * Emits Linears that share the input `x`, returning one output per spec. Unfused, each is its own layer; with
 * `ctx.fuse` their rows are concatenated into the layer `fusedName` (one GEMM, `[..., Σ out]`) whose output is split
 * back on the last axis, so callers see the same values either way.
 */
export function applyLinearGroup(ctx: BuildContext, x: string, fusedName: string, specs: LinearSpec[]): string[] {
  if (ctx.precomputed && specs.every((s) => ctx.precomputed?.has(s.name)))
    return specs.map((s) => ctx.precomputed!.get(s.name)!);
  if (!ctx.fuse) return specs.map((s) => applyLinear(ctx, x, s));
  const fused = fuseLinearRows(
    specs.map((s) => ({ name: s.name, weights: readLinearChecked(ctx.w, s.name, s.outFeatures, s.inFeatures) })),
  );
  ctx.linearLayers.push(fusedName);
  const y = ctx.policy(ctx.b, x, { name: fusedName, weights: fused.weights, parts: fused.parts });
  return split(
    ctx.b,
    y,
    -1,
    specs.map((s) => s.outFeatures),
  );
}

/**
 * Splits a modulation vector `[B, n·D]` into `n` chunks `[B, 1, D]` in diffusers' `chunk` order; the middle axis
 * lets each chunk broadcast over the token axis.
 */
export function modulationChunks(ctx: BuildContext, emb: string, n: number): string[] {
  const { b, cfg } = ctx;
  const e = b.op('Unsqueeze', [emb, b.constI64([1])]); // [B, 1, n·D]
  return split(b, e, -1, new Array<number>(n).fill(cfg.dim));
}

/** `LN(x)·(1 + scale) + shift`, LN without affine (AdaLayerNorm); x `[B, N, D]`, scale/shift `[B, 1, D]`. */
export function modulate(ctx: BuildContext, x: string, shift: string, scale: string): string {
  const { b } = ctx;
  const xn = layerNorm(b, x, ctx.cfg.dim, FLUX_NORM_EPS);
  const onePlus = b.op('Add', [b.constF32(1), scale]);
  return b.op('Add', [b.op('Mul', [xn, onePlus]), shift]);
}

/**
 * GELU with the tanh approximation. XL emits the contrib `FastGelu` (ORT fuses the plain op into it only when it
 * directly follows a MatMul + Add, which the fused single-block projection's Split hides; measured 6.7 → 1.0 ms).
 */
export function gelu(ctx: BuildContext, x: string): string {
  return ctx.fastGelu ? ctx.b.op('FastGelu', [x], {}, 'com.microsoft') : geluTanh(ctx.b, x);
}

/** `x + gate · y`; gate `[B, 1, D]` broadcasts over tokens. */
export function gatedResidual(ctx: BuildContext, x: string, gate: string, y: string): string {
  return ctx.b.op('Add', [x, ctx.b.op('Mul', [gate, y])]);
}

/** diffusers `FeedForward(dim, activation_fn='gelu-tanh')`: `net.0.proj` → GELU(tanh) → `net.2`; `[B, N, D]`. */
export function feedForward(ctx: BuildContext, x: string, prefix: string): string {
  const { cfg } = ctx;
  const h = applyLinear(ctx, x, { name: `${prefix}.net.0.proj`, outFeatures: cfg.mlpDim, inFeatures: cfg.dim });
  return applyLinear(ctx, gelu(ctx, h), {
    name: `${prefix}.net.2`,
    outFeatures: cfg.dim,
    inFeatures: cfg.mlpDim,
  });
}
