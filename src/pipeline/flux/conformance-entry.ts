/**
 * @file Entry points below the step API, for conformance checks against diffusers and for benchmarks: one raw
 * transformer forward as `FluxTransformer2DModel.forward` takes it, and the sigma schedule a request gets. They run
 * on a loaded pipeline's engines; serving never calls them.
 */
import type { HostTensor } from '../../runtime/index.ts';
import { REFERENCE_MODE } from '../../shared/vocabulary/index.ts';
import type { LoraSelection } from '../lora/types.ts';
import type { EngineRegistry } from './engine-registry.ts';
import { latentGrid } from './latents.ts';
import type { LoraEngines } from './lora-engines.ts';
import { concatIds, ropeTables } from './rope.ts';
import { type FlowMatchConfig, fluxSigmas } from './schedule.ts';

/** The inputs of one raw transformer forward (see {@link forwardTransformer}). */
export interface TransformerInputs {
  /** `[B, L, C]`; wider than the model's input: control latents follow (the control engine runs). */
  hidden: Float32Array;
  /** `[B, T, D]` */
  encoder: Float32Array;
  /** `[B, P]` */
  pooled: Float32Array;
  /** `[B]` */
  timestep: Float32Array;
  /** `[B]`; 3.5 each when absent. */
  guidance?: Float32Array;
  /** `[T, 3]` */
  txtIds: Float32Array;
  /** `[L, 3]` */
  imgIds: Float32Array;
}

/**
 * One raw transformer forward of `mode` (with the LoRA set `loras`), as diffusers' `FluxTransformer2DModel.forward`
 * takes it. Returns `[B, L, outChannels]`.
 */
export async function forwardTransformer(
  engines: EngineRegistry,
  loraEngines: LoraEngines,
  input: TransformerInputs,
  mode = REFERENCE_MODE,
  loras: readonly LoraSelection[] = [],
): Promise<Float32Array> {
  const b = input.timestep.length;
  const t = input.txtIds.length / 3;
  const l = input.imgIds.length / 3;
  // A `hidden` wider than the model's input carries control latents: run it on the control engine.
  const extra = Math.max(0, input.hidden.length / (b * l) - loraEngines.baseInChannels);
  const lora = loras.length > 0 ? await loraEngines.feeds(mode, loras, extra) : undefined;
  const { sessions, manifest, modulation } = lora?.engine ?? (await engines.engine(mode));
  const cfg = manifest.config;
  const rope = ropeTables(concatIds(input.txtIds, input.imgIds), cfg.axesDimsRope);
  const conditioning: Record<string, HostTensor> = {
    pooled_projections: { data: input.pooled, dims: [b, cfg.pooledProjectionDim] },
    timestep: { data: input.timestep, dims: [b] },
    ...(cfg.guidanceEmbeds ? { guidance: { data: input.guidance ?? new Float32Array(b).fill(3.5), dims: [b] } } : {}),
  };
  const out = await sessions.transformer.run({
    hidden_states: { data: input.hidden, dims: [b, l, cfg.inChannels] },
    encoder_hidden_states: { data: input.encoder, dims: [b, t, cfg.jointAttentionDim] },
    // XL: the modulation component turns the conditioning into the transformer's `modulation` input [B, M].
    ...(modulation ? { modulation: (await modulation.run(conditioning)).modulation! } : conditioning),
    rope_cos: { data: rope.cos, dims: [rope.seqLen, rope.dim] },
    rope_sin: { data: rope.sin, dims: [rope.seqLen, rope.dim] },
    ...lora?.feeds,
  });
  return out.sample!.data as Float32Array;
}

/** The sigma schedule a `steps` × `height`×`width` request gets (conformance, previews). */
export async function scheduleFor(
  engines: EngineRegistry,
  scheduler: FlowMatchConfig,
  steps: number,
  height: number,
  width: number,
): Promise<{ sigmas: Float32Array; timesteps: Float32Array }> {
  const manifest = await engines.manifest();
  const grid = latentGrid(height, width, manifest.config.vaeScaleFactor);
  return fluxSigmas(steps, grid.seqLen, scheduler);
}
