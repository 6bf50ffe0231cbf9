/**
 * @file The LoRA vocabulary shared by the parsers, the set manager and the feed builder: every format is reduced to
 * per-diffusers-module factors, the semantics of docs/FLUX_SPEC.md §7.1 (`y = W x + b + s·scale·B(A x) [+ s·scale·b_B]`).
 */

/** The file formats we recognise (docs/FLUX_SPEC.md §7.2–7.6). */
export type LoraFormat = 'diffusers' | 'kohya' | 'xlabs' | 'bfl-control';

/** Every {@link LoraFormat}, for capability reports (`models { loraFormats }`). */
export const LORA_FORMATS: readonly LoraFormat[] = Object.freeze(['diffusers', 'kohya', 'xlabs', 'bfl-control']);

/** One LoRA's factors for one diffusers Linear module. */
export interface LoraFactor {
  /** Diffusers module name, e.g. `transformer_blocks.0.attn.to_q`. */
  module: string;
  /** Down factor `[rank, inFeatures]`, row-major. Several modules may share one array (fused splits). */
  a: Float32Array;
  /** Up factor `[outFeatures, rank]`, row-major. */
  b: Float32Array;
  rank: number;
  inFeatures: number;
  outFeatures: number;
  /** α/r (or 1): multiplies the delta on top of the user strength. */
  scale: number;
  /** `lora_B.bias` `[outFeatures]` (BFL Control). */
  bias?: Float32Array;
}

/** A parsed, validated LoRA file. */
export interface ParsedLora {
  format: LoraFormat;
  /** Factors keyed by diffusers module. */
  factors: Map<string, LoraFactor>;
  /** Full replacements of QK-norm weights keyed by diffusers module (`…attn.norm_q`), BFL Control only. */
  norms: Map<string, Float32Array>;
  /**
   * `hidden_states` width the LoRA needs: the model's `in_channels`, or more for control LoRAs whose
   * `x_embedder` down factor is wider (the engine must be compiled control-capable).
   */
  inChannels: number;
  /** Keys the parser dropped on purpose (`dora_scale`), for the report. */
  ignoredKeys: string[];
}

/** Facts about a LoRA file for the `loras` query. */
export interface LoraInfo {
  /** Name relative to LORA_DIR, e.g. `style/anime.safetensors`. */
  name: string;
  format: LoraFormat;
  /** Largest rank over its layers. */
  rank: number;
  /** Distinct ranks over its layers, ascending. */
  ranks: number[];
  /** Diffusers modules it changes (Linears, then replaced norms), sorted. */
  targetedLayers: string[];
  /** File size in bytes. */
  sizeBytes: number;
  /** Whether it carries `lora_B.bias` deltas. */
  hasBias: boolean;
  /** Number of QK-norm weights it replaces. */
  normReplacements: number;
  /** `hidden_states` width it needs (> the model's for control LoRAs). */
  inChannels: number;
}

/** One entry of a LoRA set: which LoRA and how strongly. */
export interface LoraSelection {
  name: string;
  /** User scale `s`. @default 1 */
  strength: number;
}

/** Summarises a parsed LoRA (size comes from the file). */
export function describeLora(name: string, lora: ParsedLora, sizeBytes: number): LoraInfo {
  const ranks = [...new Set([...lora.factors.values()].map((f) => f.rank))].sort((x, y) => x - y);
  return {
    name,
    format: lora.format,
    rank: ranks[ranks.length - 1] ?? 0,
    ranks,
    targetedLayers: [...[...lora.factors.keys()].sort(), ...[...lora.norms.keys()].sort()],
    sizeBytes,
    hasBias: [...lora.factors.values()].some((f) => f.bias !== undefined),
    normReplacements: lora.norms.size,
    inChannels: lora.inChannels,
  };
}
