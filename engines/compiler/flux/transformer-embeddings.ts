/**
 * @file The conditioning vector of the FLUX transformer (diffusers `CombinedTimestepGuidanceTextProjEmbeddings` /
 * `CombinedTimestepTextProjEmbeddings`, docs/FLUX_SPEC.md §5.2 step 2), computed in the graph from the per-sample `timestep`
 * and `guidance` inputs so a batch may hold samples at different steps.
 */

import { TIME_PROJ_DIM } from '../../../src/shared/vocabulary/transformer-config.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { silu } from '../onnx/nn.ts';
import { applyLinear, type BuildContext } from './transformer-layers.ts';

/** Both σ and the guidance scale enter the model ×1000 (docs/FLUX_SPEC.md §9 pitfall 5). */
const TIME_SCALE = 1000;

/** Period bound of the sinusoid (diffusers `max_period=10000`). */
const MAX_PERIOD = 10000;

/**
 * The `dim / 2` frequencies of diffusers' `get_timestep_embedding` (`downscale_freq_shift=0`), rounded as PyTorch
 * computes them in float32: `exp(fl32(fl32(−ln(10000)·k) / half))`.
 */
export function sinusoidFrequencies(dim = TIME_PROJ_DIM): Float32Array {
  const half = dim / 2;
  const out = new Float32Array(half);
  const negLog = Math.fround(-Math.log(MAX_PERIOD));
  for (let k = 0; k < half; k++) out[k] = Math.exp(Math.fround(Math.fround(negLog * k) / half));
  return out;
}

/**
 * `[B]` values → `[B, 256]` sinusoidal embedding of `1000·v`, cosine half first (diffusers `Timesteps(256,
 * flip_sin_to_cos=True, downscale_freq_shift=0)`).
 */
export function timeProjection(b: GraphBuilder, v: string): string {
  const scaled = b.op('Mul', [v, b.constF32(TIME_SCALE)]); // [B]
  const col = b.op('Unsqueeze', [scaled, b.constI64([1])]); // [B, 1]
  const freqs = b.f32('time_proj.freqs', sinusoidFrequencies(), [TIME_PROJ_DIM / 2]);
  const angles = b.op('Mul', [col, freqs]); // [B, 128]
  return b.op('Concat', [b.op('Cos', [angles]), b.op('Sin', [angles])], { axis: -1 });
}

/** `linear_2(SiLU(linear_1(x)))`: diffusers `TimestepEmbedding` and `PixArtAlphaTextProjection(act_fn='silu')`. */
function mlpEmbedding(ctx: BuildContext, x: string, prefix: string, inFeatures: number): string {
  const { dim } = ctx.cfg;
  const h = applyLinear(ctx, x, { name: `${prefix}.linear_1`, outFeatures: dim, inFeatures });
  return applyLinear(ctx, silu(ctx.b, h), { name: `${prefix}.linear_2`, outFeatures: dim, inFeatures: dim });
}

/** The graph values {@link conditioningEmbedding} reads. */
export interface ConditioningInputs {
  /** `[B]` σ. */
  timestep: string;
  /** `[B]` guidance scale; required iff the config has `guidance_embeds`. */
  guidance?: string;
  /** `[B, pooled_projection_dim]` CLIP pooled embedding. */
  pooled: string;
}

/**
 * `temb` `[B, D]` = timestep_embedder(sinus(1000·t)) [+ guidance_embedder(sinus(1000·g))] + text_embedder(pooled),
 * summed in diffusers' order (time + guidance first, then text).
 */
export function conditioningEmbedding(ctx: BuildContext, inputs: ConditioningInputs): string {
  const { b, cfg } = ctx;
  return b.scope('time_text_embed', () => {
    const pre = 'time_text_embed';
    let temb = mlpEmbedding(ctx, timeProjection(b, inputs.timestep), `${pre}.timestep_embedder`, TIME_PROJ_DIM);
    if (cfg.guidanceEmbeds) {
      if (!inputs.guidance)
        throw new Error('conditioningEmbedding: guidance input missing for a guidance-embedding model');
      const g = mlpEmbedding(ctx, timeProjection(b, inputs.guidance), `${pre}.guidance_embedder`, TIME_PROJ_DIM);
      temb = b.op('Add', [temb, g]);
    }
    const text = mlpEmbedding(ctx, inputs.pooled, `${pre}.text_embedder`, cfg.pooledProjectionDim);
    return b.op('Add', [temb, text]);
  });
}
