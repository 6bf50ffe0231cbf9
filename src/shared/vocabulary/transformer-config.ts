/**
 * @file The FLUX transformer's configuration (diffusers `transformer/config.json`, docs/FLUX_SPEC.md §1.1) resolved to the
 * sizes the graph builder needs (and the LoRA layer layout, the CUDA load spec); the compiler's weight readers
 * check every tensor against those sizes (`engines/compiler/flux/checked-weights.ts`), so a checkpoint that does
 * not match its config fails at compile time with the tensor's name instead of deep inside ORT.
 */

/** `transformer/config.json` of `FluxTransformer2DModel` as diffusers writes it; absent fields take diffusers' defaults. */
export interface FluxTransformerConfig {
  patch_size?: number;
  in_channels?: number;
  /** `null` or absent: equal to `in_channels`. */
  out_channels?: number | null;
  num_layers?: number;
  num_single_layers?: number;
  attention_head_dim?: number;
  num_attention_heads?: number;
  joint_attention_dim?: number;
  pooled_projection_dim?: number;
  guidance_embeds?: boolean;
  axes_dims_rope?: readonly number[];
}

/** The sizes of one transformer, derived from its config. */
export interface ResolvedTransformerConfig {
  /** Features of each input token (`hidden_states` last dim). */
  inChannels: number;
  /** Features of each output token: `patch_size² · out_channels`. */
  outFeatures: number;
  numLayers: number;
  numSingleLayers: number;
  heads: number;
  headDim: number;
  /** Model width `heads · headDim` (3072 for FLUX.1-dev). */
  dim: number;
  /** Feed-forward / single-block MLP width, `4 · dim` (mlp_ratio 4 is hard-coded in diffusers). */
  mlpDim: number;
  jointAttentionDim: number;
  pooledProjectionDim: number;
  guidanceEmbeds: boolean;
  axesDimsRope: readonly number[];
}

/** A config or weight tensor that does not fit the FLUX transformer; `tensor` names the offender. */
export class TransformerCompileError extends Error {
  override name = 'TransformerCompileError';
  constructor(
    /** Weight tensor (`transformer_blocks.0.attn.to_q.weight`) or config field (`config.axes_dims_rope`) at fault. */
    readonly tensor: string,
    message: string,
  ) {
    super(`${tensor}: ${message}`);
  }
}

/** Width of the sinusoidal timestep / guidance projection (diffusers `Timesteps(num_channels=256)`). */
export const TIME_PROJ_DIM = 256;

function positiveInt(field: string, value: unknown, fallback: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new TransformerCompileError(`config.${field}`, `must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return v;
}

/**
 * Applies diffusers' defaults (FLUX.1-dev sizes, `guidance_embeds` false, axes (16, 56, 56)) and checks consistency.
 * @throws TransformerCompileError naming the config field on a non-positive size or when the RoPE axes do not add
 *   up to the head dim.
 */
export function resolveTransformerConfig(config: FluxTransformerConfig): ResolvedTransformerConfig {
  const patch = positiveInt('patch_size', config.patch_size, 1);
  const inChannels = positiveInt('in_channels', config.in_channels, 64);
  const outChannels = positiveInt('out_channels', config.out_channels, inChannels);
  const heads = positiveInt('num_attention_heads', config.num_attention_heads, 24);
  const headDim = positiveInt('attention_head_dim', config.attention_head_dim, 128);
  const axes = config.axes_dims_rope ?? [16, 56, 56];
  if (!Array.isArray(axes) || axes.some((d) => !Number.isInteger(d) || d < 2 || d % 2 !== 0)) {
    throw new TransformerCompileError(
      'config.axes_dims_rope',
      `must be positive even integers, got ${JSON.stringify(axes)}`,
    );
  }
  const ropeDim = axes.reduce((a, d) => a + d, 0);
  if (ropeDim !== headDim) {
    throw new TransformerCompileError(
      'config.axes_dims_rope',
      `[${axes.join(', ')}] sums to ${ropeDim}, but attention_head_dim is ${headDim}`,
    );
  }
  const dim = heads * headDim;
  return {
    inChannels,
    outFeatures: patch * patch * outChannels,
    numLayers: positiveInt('num_layers', config.num_layers, 19),
    numSingleLayers: positiveInt('num_single_layers', config.num_single_layers, 38),
    heads,
    headDim,
    dim,
    mlpDim: 4 * dim,
    jointAttentionDim: positiveInt('joint_attention_dim', config.joint_attention_dim, 4096),
    pooledProjectionDim: positiveInt('pooled_projection_dim', config.pooled_projection_dim, 768),
    guidanceEmbeds: config.guidance_embeds ?? false,
    axesDimsRope: [...axes],
  };
}
