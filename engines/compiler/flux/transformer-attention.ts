/**
 * @file The attention pieces of the FLUX blocks (docs/FLUX_SPEC.md §5.3–5.4): head split, QK RMSNorm, interleaved-pair
 * RoPE and the attention core.
 *
 * Heads are kept in `[B, H, N, Dh]` layout from the moment they are split: RMSNorm works on the last axis either way,
 * the RoPE tables `[S, Dh]` then broadcast over `[B, H]` without any reshape, and SDPA wants this layout anyway.
 */
import { reshape, rmsNorm, sdpaChunked } from '../onnx/nn.ts';
import { readChecked } from './checked-weights.ts';
import type { TransformerContext } from './transformer-layers.ts';

/** RMSNorm epsilon of the QK norms (diffusers `RMSNorm(dim_head, eps=1e-6)`). */
const QK_NORM_EPS = 1e-6;

/** `[B, N, D]` → `[B, H, N, Dh]` (diffusers `unflatten(-1, (heads, -1))`, then heads first). */
export function toHeads(ctx: TransformerContext, x: string): string {
  const { b, cfg } = ctx;
  const split = reshape(b, x, [0, 0, cfg.heads, cfg.headDim]); // [B, N, H, Dh]
  return b.op('Transpose', [split], { perm: [0, 2, 1, 3] });
}

/** RMSNorm over the head dim with the learned weight `<module>.weight` `[Dh]`; x `[B, H, N, Dh]`. */
export function qkNorm(ctx: TransformerContext, x: string, module: string): string {
  const weight = readChecked(ctx.w, `${module}.weight`, [ctx.cfg.headDim]);
  if (ctx.normWeight)
    return ctx.b.op('Mul', [rmsNorm(ctx.b, x, undefined, QK_NORM_EPS, module), ctx.normWeight(ctx.b, module, weight)]);
  return rmsNorm(ctx.b, x, weight, QK_NORM_EPS, module);
}

/**
 * Interleaved-pair RoPE on `x` `[B, H, S, Dh]` with the tables `[S, Dh]` (each frequency repeated twice):
 * `out₂ⱼ = x₂ⱼ·cos − x₂ⱼ₊₁·sin`, `out₂ⱼ₊₁ = x₂ⱼ₊₁·cos + x₂ⱼ·sin`, i.e. `x·cos + rot(x)·sin` with
 * `rot(x)₂ⱼ = −x₂ⱼ₊₁`, `rot(x)₂ⱼ₊₁ = x₂ⱼ` (diffusers `apply_rotary_emb`, `use_real_unbind_dim=-1`).
 */
export function applyRope(ctx: TransformerContext, x: string): string {
  const { b } = ctx;
  const pairs = reshape(b, x, [0, 0, 0, -1, 2]); // [B, H, S, Dh/2, 2]
  const [even, odd] = b.node('Split', [pairs, b.constI64([1, 1])], { axis: -1 }, { outputs: 2 }) as [string, string];
  const rotated = b.op('Concat', [b.op('Neg', [odd]), even], { axis: -1 }); // [B, H, S, Dh/2, 2]
  const rot = reshape(b, rotated, [0, 0, 0, -1]); // [B, H, S, Dh]
  return b.op('Add', [b.op('Mul', [x, ctx.ropeCos]), b.op('Mul', [rot, ctx.ropeSin])]);
}

/**
 * Softmax attention over the joint sequence with scale `1/√Dh`, no mask: q, k, v `[B, H, S, Dh]` → `[B, S, D]`
 * (heads flattened back in diffusers' `flatten(2, 3)` order).
 */
export function attend(ctx: TransformerContext, q: string, k: string, v: string): string {
  const { b, cfg } = ctx;
  const out = sdpaChunked(b, q, k, v, 1 / Math.sqrt(cfg.headDim), ctx.attentionQueryChunks ?? 1); // [B, H, S, Dh]
  const tokensFirst = b.op('Transpose', [out], { perm: [0, 2, 1, 3] }); // [B, S, H, Dh]
  return reshape(b, tokensFirst, [0, 0, -1]);
}
