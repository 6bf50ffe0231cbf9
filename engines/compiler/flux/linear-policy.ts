/**
 * @file The seam through which every Linear layer of the FLUX transformer graph is emitted.
 *
 * The graph builders never emit a MatMul for a Linear themselves: they hand the layer (its diffusers module name and
 * its float32 weights) to a {@link LinearPolicy}, which returns the output value. The `original` engine uses
 * {@link plainLinear}; quantised engines plug in a policy that writes int8/int4 weights (MatMulNBits) per layer, and
 * LoRA plugs one that adds graph inputs per layer. Because the policy keys on the exact diffusers module names
 * (`transformer_blocks.0.attn.to_q`), weight maps, LoRA keys and quantisation rules all share one vocabulary.
 *
 * When projections are fused (the `XL` engine), the policy sees one layer whose weight rows are the concatenation of
 * several diffusers layers; {@link LinearLayer.parts} lists them in row order so a policy can still address each one.
 */
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { type LinearWeights, linear } from '../onnx/nn.ts';

/** One diffusers layer inside a fused layer: its module name and its rows `[offset, offset + outFeatures)`. */
export interface LinearPart {
  /** Diffusers module name of the part, e.g. `transformer_blocks.0.attn.to_k`. */
  readonly name: string;
  /** First output row (feature) of this part in the fused weight. */
  readonly offset: number;
  /** Number of output rows of this part. */
  readonly outFeatures: number;
}

/** A Linear layer as the policy sees it. */
export interface LinearLayer {
  /**
   * Diffusers module name (no `.weight` suffix), e.g. `transformer_blocks.0.attn.to_q`; for a fused layer a name of
   * the same family, e.g. `transformer_blocks.0.attn.to_qkv`.
   */
  readonly name: string;
  /** Float32 weights in PyTorch layout (`[out, in]`); for a fused layer the parts' rows concatenated in order. */
  readonly weights: LinearWeights;
  /** Present only on fused layers: the diffusers layers it is made of, in row order. */
  readonly parts?: readonly LinearPart[];
}

/**
 * Emits `y = x·Wᵀ + b` for one layer: `x` is `[..., inFeatures]`, the returned value `[..., outFeatures]`.
 * Implementations may add initializers, inputs and nodes to `b`, but must keep the output float32.
 */
export type LinearPolicy = (b: GraphBuilder, x: string, layer: LinearLayer) => string;

/** The default policy: a float32 MatMul (+ Add) with the transposed weight as an initializer named after the layer. */
export const plainLinear: LinearPolicy = (b, x, layer) => linear(b, x, layer.weights, layer.name);

/**
 * Concatenates the rows of several Linear layers that share one input, so one GEMM computes all of them. The
 * result's outputs are the parts' outputs back to back (split them with their `outFeatures`). A part without bias
 * contributes zeros when another part has one.
 *
 * @throws Error naming the part whose input width differs from the first part's.
 */
export function fuseLinearRows(parts: readonly { name: string; weights: LinearWeights }[]): {
  weights: LinearWeights;
  parts: LinearPart[];
} {
  const first = parts[0];
  if (!first) throw new Error('fuseLinearRows: no layers to fuse');
  const inFeatures = first.weights.inFeatures;
  let outFeatures = 0;
  const layout: LinearPart[] = [];
  for (const p of parts) {
    if (p.weights.inFeatures !== inFeatures) {
      throw new Error(
        `${p.name}.weight: has ${p.weights.inFeatures} input features, cannot fuse with ${first.name} (${inFeatures})`,
      );
    }
    layout.push({ name: p.name, offset: outFeatures, outFeatures: p.weights.outFeatures });
    outFeatures += p.weights.outFeatures;
  }
  // Row-major [out, in]: the fused weight is the parts' row blocks one after the other.
  const weight = new Float32Array(outFeatures * inFeatures);
  const anyBias = parts.some((p) => p.weights.bias);
  const bias = anyBias ? new Float32Array(outFeatures) : undefined;
  parts.forEach((p, i) => {
    const { offset } = layout[i]!;
    weight.set(p.weights.weight, offset * inFeatures);
    if (bias && p.weights.bias) bias.set(p.weights.bias, offset);
  });
  return { weights: { weight, outFeatures, inFeatures, bias }, parts: layout };
}
