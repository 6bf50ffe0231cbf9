/**
 * @file The LoRA layout of a compiled engine: which Linears and norms take run-time LoRA inputs, under which graph
 * input names. The compiler records it (`engines/compiler/flux/lora-policy.ts`) beside the manifest; the pipeline
 * reads it to build the feeds of a LoRA set (`src/pipeline/lora/`).
 */

/** One LoRA-capable Linear of a compiled engine, as the host must feed it. */
export interface LoraLayerLayout {
  /** Layer name as the policy saw it (diffusers module, or fused name). */
  name: string;
  inFeatures: number;
  outFeatures: number;
  /** For fused layers: the diffusers modules and their row ranges. */
  parts?: { name: string; offset: number; outFeatures: number }[];
}

/** What a LoRA engine's transformer takes besides the base inputs. */
export interface LoraEngineLayout {
  /** Format tag of this record. */
  version: 1;
  layers: LoraLayerLayout[];
  /** QK-norm modules whose weight is the input `lora_norm.<module>` `[dim]`. */
  norms: { module: string; dim: number }[];
  /** `hidden_states` width of this engine (128 on a control-capable engine of a 64-channel model). */
  inChannels: number;
  /** `in_channels` of the model the engine was compiled from. */
  baseInChannels: number;
}

/** Graph-input names of one layer. */
export const loraInputNames = (layer: string) => ({
  a: `lora_a.${layer}`,
  b: `lora_b.${layer}`,
  bias: `lora_bias.${layer}`,
});

/** Graph-input name of a replaceable norm weight. */
export const loraNormInputName = (module: string) => `lora_norm.${module}`;

/** Symbolic rank dim of one layer (distinct per layer: ranks differ between layers and between LoRA sets). */
export const loraRankDim = (layer: string) => `r.${layer}`;
