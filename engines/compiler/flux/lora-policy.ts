/**
 * @file LoRA as run-time inputs of the compiled transformer: a {@link LinearPolicy} wrapper that gives every Linear
 * of the graph two (three) extra graph inputs, and the layout record the host needs to feed them.
 *
 * For a layer `name` with `[out, in]` weights the wrapper adds
 * - `lora_a.<name>` `[r, in]`: the down factors of every active LoRA, stacked along the rank axis, each already
 *   multiplied on the host by its strength and α/r (so the graph needs no scale input);
 * - `lora_b.<name>` `[out, r]`: the matching up factors, columns in the same order;
 * - `lora_bias.<name>` `[out]`: Σ strength·scale·`lora_B.bias` (BFL Control LoRAs); zeros otherwise;
 * and computes `y = base(x) + (x·Aᵀ)·Bᵀ + bias`. The rank axis is a separate symbolic dim per layer (`r.<name>`),
 * so one engine serves ranks 1..256, several LoRAs at once (ranks add up) and rank 0 for layers no active LoRA
 * targets (the extra GEMMs then produce zeros without work). The base layer is emitted by the wrapped policy, so a
 * quantised mode keeps its own weights and only the LoRA path is float32.
 *
 * Fused layers (XL: `to_qkv`, `to_qkv_mlp`, `norm1_joint.linear`) get one input pair under the fused name; the host
 * writes each part's up factors into that part's rows of `lora_b` (block structure), see `src/pipeline/lora/feeds.ts`.
 *
 * The QK-norm weights become inputs `lora_norm.<module>` `[Dh]` through the graph builder's norm hook, because BFL
 * Control LoRAs replace them outright (they are not deltas); the host feeds the base values when no LoRA does.
 */

import {
  type LoraEngineLayout,
  type LoraLayerLayout,
  loraInputNames,
  loraNormInputName,
  loraRankDim,
} from '../../../src/shared/vocabulary/lora-layout.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import type { LinearPolicy } from './linear-policy.ts';

/** Collects the layout while the graph is built; pass {@link LoraRecorder.policy} as the linear policy. */
export class LoraRecorder {
  readonly layers: LoraLayerLayout[] = [];
  readonly norms: { module: string; dim: number }[] = [];

  constructor(private readonly base: LinearPolicy) {}

  /** The wrapping policy: base output plus the low-rank delta from the layer's inputs. */
  readonly policy: LinearPolicy = (b, x, layer) => {
    const { outFeatures: out, inFeatures: inF } = layer.weights;
    const y = this.base(b, x, layer); // [..., out]
    const names = loraInputNames(layer.name);
    const r = loraRankDim(layer.name);
    const a = b.input(names.a, 'float32', [r, inF]);
    const bu = b.input(names.b, 'float32', [out, r]);
    const bias = b.input(names.bias, 'float32', [out]);
    this.layers.push({
      name: layer.name,
      inFeatures: inF,
      outFeatures: out,
      ...(layer.parts ? { parts: layer.parts.map((p) => ({ ...p })) } : {}),
    });
    return b.scope(`${layer.name}/lora`, () => {
      // Transposes of [r, in] / [out, r] are cheap next to the GEMMs (r ≤ a few hundred) and ORT folds them into
      // FusedMatMul(transB) at the default optimisation level.
      const down = b.op('MatMul', [x, b.op('Transpose', [a], { perm: [1, 0] })]); // [..., r]
      const up = b.op('MatMul', [down, b.op('Transpose', [bu], { perm: [1, 0] })]); // [..., out]
      return b.op('Add', [y, b.op('Add', [up, bias])]);
    });
  };

  /** Norm hook: the weight of `module` becomes the input `lora_norm.<module>` `[dim]`. */
  readonly normWeight = (b: GraphBuilder, module: string, weight: Float32Array): string => {
    this.norms.push({ module, dim: weight.length });
    return b.input(loraNormInputName(module), 'float32', [weight.length]);
  };

  /** The finished layout. */
  layout(inChannels: number, baseInChannels: number): LoraEngineLayout {
    return { version: 1, layers: this.layers, norms: this.norms, inChannels, baseInChannels };
  }
}
