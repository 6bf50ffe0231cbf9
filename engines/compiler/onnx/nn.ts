/**
 * @file Neural-network building blocks over {@link GraphBuilder}, shared by the CLIP, T5, FLUX transformer and VAE
 * compilers. Each helper emits the plain ONNX ops that reproduce the PyTorch module exactly in float32 (the
 * `original` engine); optimised variants are the business of later passes.
 */
import type { GraphBuilder } from './graph-builder.ts';

/** Read access to a component's weights by (diffusers) name; `WeightSource` of src/shared/weights satisfies it. */
export interface WeightReader {
  has(name: string): boolean;
  info(name: string): { shape: readonly number[] };
  readF32(name: string): Float32Array;
}

/** Transposes a row-major `[rows, cols]` matrix to `[cols, rows]`. */
export function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(src.length);
  // Blocked so both sides stay in cache on the 12288×3072 matrices of FLUX.1-dev.
  const BS = 64;
  for (let r0 = 0; r0 < rows; r0 += BS) {
    const r1 = Math.min(rows, r0 + BS);
    for (let c0 = 0; c0 < cols; c0 += BS) {
      const c1 = Math.min(cols, c0 + BS);
      for (let r = r0; r < r1; r++) {
        const row = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[row + c]!;
      }
    }
  }
  return out;
}

/** A linear layer's weights in PyTorch layout: `weight [out, in]`, optional `bias [out]`. */
export interface LinearWeights {
  weight: Float32Array;
  outFeatures: number;
  inFeatures: number;
  bias?: Float32Array;
}

/** Reads `<prefix>.weight` / `<prefix>.bias` of a PyTorch Linear. */
export function readLinear(w: WeightReader, prefix: string): LinearWeights {
  const shape = w.info(`${prefix}.weight`).shape;
  if (shape.length !== 2) throw new Error(`${prefix}.weight: expected a 2-D Linear weight, got [${shape.join(',')}]`);
  const [outFeatures, inFeatures] = shape as [number, number];
  const bias = w.has(`${prefix}.bias`) ? w.readF32(`${prefix}.bias`) : undefined;
  if (bias && bias.length !== outFeatures)
    throw new Error(`${prefix}.bias: ${bias.length} values for ${outFeatures} outputs`);
  return { weight: w.readF32(`${prefix}.weight`), outFeatures, inFeatures, bias };
}

/**
 * `y = x·Wᵀ + b` on the last axis. The weight is stored transposed (`[in, out]`) so ORT runs a plain MatMul on any
 * leading shape.
 */
export function linear(b: GraphBuilder, x: string, lw: LinearWeights, hint: string): string {
  const wt = b.f32(`${hint}.weight_t`, transpose2d(lw.weight, lw.outFeatures, lw.inFeatures), [
    lw.inFeatures,
    lw.outFeatures,
  ]);
  const y = b.op('MatMul', [x, wt]);
  return lw.bias ? b.op('Add', [y, b.f32(`${hint}.bias`, lw.bias, [lw.outFeatures])]) : y;
}

/** `linear(x, read(prefix))` in one call. */
export function linearFrom(b: GraphBuilder, w: WeightReader, x: string, prefix: string): string {
  return linear(b, x, readLinear(w, prefix), prefix);
}

/** LayerNorm over the last axis (`dim` features); without weights it is the affine-free form FLUX uses. */
export function layerNorm(
  b: GraphBuilder,
  x: string,
  dim: number,
  eps: number,
  affine?: { weight: Float32Array; bias: Float32Array },
  hint = 'ln',
): string {
  const scale = affine ? b.f32(`${hint}.weight`, affine.weight, [dim]) : b.constF32(new Array(dim).fill(1), [dim]);
  const inputs = affine ? [x, scale, b.f32(`${hint}.bias`, affine.bias, [dim])] : [x, scale];
  return b.op('LayerNormalization', inputs, { axis: -1, epsilon: { float: eps } });
}

/** RMSNorm over the last axis as PyTorch computes it: `x · rsqrt(mean(x²) + eps) · w`. */
export function rmsNorm(
  b: GraphBuilder,
  x: string,
  weight: Float32Array | undefined,
  eps: number,
  hint = 'rms',
): string {
  const ms = b.op('ReduceMean', [b.op('Mul', [x, x]), b.constI64([-1])], { keepdims: 1 });
  const inv = b.op('Reciprocal', [b.op('Sqrt', [b.op('Add', [ms, b.constF32(eps)])])]);
  const y = b.op('Mul', [x, inv]);
  return weight ? b.op('Mul', [y, b.f32(`${hint}.weight`, weight, [weight.length])]) : y;
}

/** SiLU: `x · σ(x)`. */
export function silu(b: GraphBuilder, x: string): string {
  return b.op('Mul', [x, b.op('Sigmoid', [x])]);
}

/** GELU with the tanh approximation (`gelu_pytorch_tanh`, T5's `gelu_new`). */
export function geluTanh(b: GraphBuilder, x: string): string {
  return b.op('Gelu', [x], { approximate: 'tanh' });
}

/** CLIP's quick GELU: `x · σ(1.702·x)`. */
export function quickGelu(b: GraphBuilder, x: string): string {
  return b.op('Mul', [x, b.op('Sigmoid', [b.op('Mul', [x, b.constF32(1.702)])])]);
}

/** Reshape with a literal target shape (0 copies the input dim, -1 infers). */
export function reshape(b: GraphBuilder, x: string, shape: number[]): string {
  return b.op('Reshape', [x, b.constI64(shape)]);
}

/** Splits `x` along `axis` into parts of the given sizes. */
export function split(b: GraphBuilder, x: string, axis: number, sizes: number[]): string[] {
  return b.node('Split', [x, b.constI64(sizes)], { axis }, { outputs: sizes.length });
}

/**
 * Scaled dot-product attention over heads, no mask: q `[B, H, Sq, D]`, k `[B, H, Sk, D]`, v `[B, H, Sk, D]` →
 * `[B, H, Sq, D]`. The scale is applied to q before the product, which equals PyTorch's SDPA within rounding.
 */
export function sdpa(b: GraphBuilder, q: string, k: string, v: string, scale: number): string {
  const kt = b.op('Transpose', [k], { perm: [0, 1, 3, 2] }); // [B, H, D, Sk]
  const scores = b.op('MatMul', [b.op('Mul', [q, b.constF32(scale)]), kt]); // [B, H, Sq, Sk]
  return b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), v]);
}

/**
 * {@link sdpa} computed in `chunks` blocks of queries: block i holds query rows `[⌊i·Sq/K⌋, ⌊(i+1)·Sq/K⌋)` (bounds
 * from the runtime `Sq`, so any size works; a block may be empty when Sq < K). Softmax is per query row, so the
 * result equals {@link sdpa}'s; but only one `[B, H, Sq/K, Sk]` score block lives at a time instead of the whole
 * `[B, H, Sq, Sk]` matrix (1 GiB per sample for the VAE's 128² latent grid at 1024²). ORT runs the blocks one after
 * the other (they are emitted in order and nothing joins them before the final Concat), reusing one buffer.
 */
export function sdpaChunked(b: GraphBuilder, q: string, k: string, v: string, scale: number, chunks: number): string {
  if (chunks <= 1) return sdpa(b, q, k, v, scale);
  const kt = b.op('Transpose', [k], { perm: [0, 1, 3, 2] }); // [B, H, D, Sk]
  const qs = b.op('Mul', [q, b.constF32(scale)]); // [B, H, Sq, D]
  const sq = b.op('Slice', [b.op('Shape', [q]), b.constI64([2]), b.constI64([3])]); // [1] int64: Sq
  const bound = (i: number) => b.op('Div', [b.op('Mul', [sq, b.constI64([i])]), b.constI64([chunks])]);
  const outs: string[] = [];
  for (let i = 0; i < chunks; i++) {
    const qi = b.op('Slice', [qs, bound(i), bound(i + 1), b.constI64([2])]); // [B, H, Sq_i, D]
    const scores = b.op('MatMul', [qi, kt]); // [B, H, Sq_i, Sk]
    outs.push(b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), v])); // [B, H, Sq_i, D]
  }
  return b.op('Concat', outs, { axis: 2 });
}
