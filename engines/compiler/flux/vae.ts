/**
 * @file ONNX graph of the FLUX VAE decoder (`AutoencoderKL.decoder`, docs/FLUX_SPEC.md §1.2 and §6).
 *
 * The graph takes the latent already scaled for decoding (`z / scaling + shift`, NCHW) and returns the raw decoder
 * output in ≈[-1, 1]; unpacking, scaling and postprocessing stay on the TypeScript side
 * (`src/pipeline/flux/vae-scaling.ts`). FLUX has neither quant conv, so decoding is the decoder alone.
 *
 * Order of the network, for `block_out_channels = [c0, c1, c2, c3]` (FLUX.1-dev: 128, 256, 512, 512):
 * conv_in (latent → c3) → mid block (resnet, attention, resnet at c3) → up_blocks.0 … up_blocks.3 walking the
 * channels in reverse (c3, c2, c1, c0), each with `layers_per_block + 1` resnets and, except the last, a nearest ×2
 * upsampler → conv_norm_out GroupNorm → SiLU → conv_out (c0 → 3).
 */
import type { Dim, DType, GraphBuilder } from '../onnx/graph-builder.ts';
import { silu, type WeightReader } from '../onnx/nn.ts';
import { conv2d, groupNorm, midAttention, resnetBlock, upsample, VaeWeightError } from './vae-blocks.ts';

export { VaeWeightError } from './vae-blocks.ts';

/** The decoder-relevant fields of a diffusers `AutoencoderKL` config. */
export interface VaeDecoderConfig {
  /** Channels of the latent (`latent_channels`): 16 for FLUX. */
  latentChannels: number;
  /** Channels of the image (`out_channels`): 3. */
  outChannels: number;
  /** `block_out_channels`, encoder order (the decoder walks it reversed). */
  blockOutChannels: readonly number[];
  /** `layers_per_block`; each up block has one more resnet than this. */
  layersPerBlock: number;
  /** `norm_num_groups` of every GroupNorm. */
  normNumGroups: number;
  /** `mid_block_add_attention`: whether the mid block has its attention. */
  midBlockAddAttention: boolean;
}

/** FLUX.1-dev's VAE decoder (docs/FLUX_SPEC.md §1.2). */
export const FLUX_VAE_DECODER_CONFIG: VaeDecoderConfig = Object.freeze({
  latentChannels: 16,
  outChannels: 3,
  blockOutChannels: Object.freeze([128, 256, 512, 512]),
  layersPerBlock: 2,
  normNumGroups: 32,
  midBlockAddAttention: true,
});

/** A VAE config value the decoder compiler cannot build; `param` names the config field. */
export class VaeConfigError extends Error {
  override name = 'VaeConfigError';
  constructor(
    /** The config field (diffusers spelling) at fault. */
    readonly param: string,
    message: string,
  ) {
    super(`vae config ${param}: ${message}`);
  }
}

/** One graph input or output: name, element type and shape (strings are dynamic axes). */
export interface GraphTensorSpec {
  name: string;
  dtype: DType;
  dims: Dim[];
}

/** What a compiled graph takes and returns. */
export interface GraphDescriptor {
  inputs: GraphTensorSpec[];
  outputs: GraphTensorSpec[];
}

/** Options of {@link buildVaeDecoderGraph}. */
export interface VaeDecoderGraphOptions {
  /** Prefix of the decoder's tensors in the weight source. @default 'decoder.' (a whole AutoencoderKL checkpoint) */
  prefix?: string;
  /** Query blocks of the mid-block attention (`midAttention`): same result, 1/N of its memory. @default 1 */
  attentionQueryChunks?: number;
}

/**
 * Query blocks the compiled VAE graphs (decoder and encoder) split their mid-block attention into: at 1024² one
 * block's scores are 64 MiB per sample instead of 1 GiB.
 */
export const VAE_ATTENTION_QUERY_CHUNKS = 16;

function positiveInt(json: Record<string, unknown>, key: string, fallback?: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new VaeConfigError(key, `must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Reads the decoder fields of a diffusers `vae/config.json` (parsed JSON), checking what this compiler supports:
 * SiLU activations, `UpDecoderBlock2D` up blocks and no `post_quant_conv`.
 * @throws VaeConfigError naming the field.
 */
export function vaeDecoderConfigFromJson(json: unknown): VaeDecoderConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new VaeConfigError('<root>', 'expected a JSON object');
  }
  const cfg = json as Record<string, unknown>;
  const blocks = cfg.block_out_channels;
  if (!Array.isArray(blocks) || blocks.length === 0 || !blocks.every((c) => Number.isInteger(c) && c > 0)) {
    throw new VaeConfigError(
      'block_out_channels',
      `must be a non-empty list of positive integers, got ${JSON.stringify(blocks)}`,
    );
  }
  if ((cfg.act_fn ?? 'silu') !== 'silu')
    throw new VaeConfigError('act_fn', `only 'silu' is supported, got ${JSON.stringify(cfg.act_fn)}`);
  if (cfg.use_post_quant_conv === true)
    throw new VaeConfigError('use_post_quant_conv', 'post_quant_conv is not supported (FLUX has none)');
  const upTypes = cfg.up_block_types;
  if (upTypes !== undefined) {
    if (!Array.isArray(upTypes) || upTypes.length !== blocks.length || upTypes.some((t) => t !== 'UpDecoderBlock2D')) {
      throw new VaeConfigError(
        'up_block_types',
        `expected ${blocks.length}× 'UpDecoderBlock2D', got ${JSON.stringify(upTypes)}`,
      );
    }
  }
  const attn = cfg.mid_block_add_attention ?? true;
  if (typeof attn !== 'boolean')
    throw new VaeConfigError('mid_block_add_attention', `must be a boolean, got ${JSON.stringify(attn)}`);
  return {
    latentChannels: positiveInt(cfg, 'latent_channels', 4),
    outChannels: positiveInt(cfg, 'out_channels', 3),
    blockOutChannels: blocks as number[],
    layersPerBlock: positiveInt(cfg, 'layers_per_block', 1),
    normNumGroups: positiveInt(cfg, 'norm_num_groups', 32),
    midBlockAddAttention: attn,
  };
}

/** Spatial factor of the decoder: ×2 per up block but the last (8 for FLUX). */
export function vaeScaleFactor(config: VaeDecoderConfig): number {
  return 2 ** (config.blockOutChannels.length - 1);
}

function checkConfig(config: VaeDecoderConfig): void {
  checkVaeConfigFields(
    [
      ['latent_channels', config.latentChannels],
      ['out_channels', config.outChannels],
      ['layers_per_block', config.layersPerBlock],
      ['norm_num_groups', config.normNumGroups],
    ],
    config.blockOutChannels,
    config.normNumGroups,
  );
}

/**
 * Checks the integer fields of a VAE config (decoder or encoder) and that every block width holds whole GroupNorm
 * groups. @throws VaeConfigError naming the field.
 */
export function checkVaeConfigFields(
  ints: readonly [string, number][],
  blockOutChannels: readonly number[],
  normNumGroups: number,
): void {
  for (const [key, v] of ints) {
    if (!Number.isInteger(v) || v < 1) throw new VaeConfigError(key, `must be a positive integer, got ${v}`);
  }
  if (blockOutChannels.length === 0) throw new VaeConfigError('block_out_channels', 'must not be empty');
  for (const c of blockOutChannels) {
    // GroupNorm needs whole groups on every normalised width.
    if (!Number.isInteger(c) || c < 1 || c % normNumGroups !== 0) {
      throw new VaeConfigError(
        'block_out_channels',
        `${c} is not a positive multiple of norm_num_groups ${normNumGroups}`,
      );
    }
  }
}

/**
 * Emits the decoder into `b`: input `latent` float32 `[batch, latent_channels, latent_height, latent_width]`
 * (already `z / scaling + shift`), output `sample` float32 `[batch, out_channels, 8·latent_height, 8·latent_width]`
 * (for 4 blocks), the raw decoder output in ≈[-1, 1]. Batch and sizes are dynamic.
 *
 * @param w diffusers-named weights of the VAE (`decoder.*`; a BFL `ae.safetensors` through the weights mapping).
 * @throws VaeConfigError on an unusable config; VaeWeightError naming a missing or mis-shaped tensor, or a tensor
 * the config does not account for (a `layers_per_block` or `block_out_channels` that disagrees with the checkpoint).
 */
export function buildVaeDecoderGraph(
  b: GraphBuilder,
  w: WeightReader,
  config: VaeDecoderConfig,
  options: VaeDecoderGraphOptions = {},
): GraphDescriptor {
  checkConfig(config);
  const p = options.prefix ?? 'decoder.';
  const groups = config.normNumGroups;
  const reversed = [...config.blockOutChannels].reverse(); // decoder order: widest first
  const nBlocks = reversed.length;
  const top = reversed[0]!;
  const bottom = reversed[nBlocks - 1]!;
  checkNoExtraLayers(w, p, config);

  const inputs: GraphTensorSpec[] = [
    { name: 'latent', dtype: 'float32', dims: ['batch', config.latentChannels, 'latent_height', 'latent_width'] },
  ];
  const outputs: GraphTensorSpec[] = [
    { name: 'sample', dtype: 'float32', dims: ['batch', config.outChannels, 'image_height', 'image_width'] },
  ];
  const latent = b.input(inputs[0]!.name, 'float32', inputs[0]!.dims);

  // [B, latent, h, w] → [B, top, h, w]
  let h = conv2d(b, w, latent, `${p}conv_in`, config.latentChannels, top, 3);

  h = resnetBlock(b, w, h, `${p}mid_block.resnets.0`, top, top, groups);
  if (config.midBlockAddAttention) {
    h = midAttention(b, w, h, `${p}mid_block.attentions.0`, top, groups, options.attentionQueryChunks);
  }
  h = resnetBlock(b, w, h, `${p}mid_block.resnets.1`, top, top, groups);

  // up_blocks.i: [B, prev, s, s] → [B, out, 2s, 2s] (no upsampling in the last block).
  let prev = top;
  for (let i = 0; i < nBlocks; i++) {
    const out = reversed[i]!;
    const blockPrefix = `${p}up_blocks.${i}`;
    for (let j = 0; j <= config.layersPerBlock; j++) {
      h = resnetBlock(b, w, h, `${blockPrefix}.resnets.${j}`, j === 0 ? prev : out, out, groups);
    }
    if (i < nBlocks - 1) h = upsample(b, w, h, `${blockPrefix}.upsamplers.0`, out);
    prev = out;
  }

  // [B, c0, H, W] → [B, out_channels, H, W]
  h = silu(b, groupNorm(b, w, h, `${p}conv_norm_out`, bottom, groups));
  h = conv2d(b, w, h, `${p}conv_out`, bottom, config.outChannels, 3);
  b.output(h, outputs[0]!.name, 'float32', outputs[0]!.dims);
  return { inputs, outputs };
}

/**
 * A checkpoint with more resnets or up blocks than the config describes would otherwise compile silently into a
 * different network; probe the first tensor past each end.
 */
function checkNoExtraLayers(w: WeightReader, p: string, config: VaeDecoderConfig): void {
  const n = config.blockOutChannels.length;
  const extraBlock = `${p}up_blocks.${n}.resnets.0.conv1.weight`;
  if (w.has(extraBlock))
    throw new VaeWeightError(extraBlock, `present, but block_out_channels lists only ${n} up blocks`);
  const extraResnet = `${p}up_blocks.0.resnets.${config.layersPerBlock + 1}.conv1.weight`;
  if (w.has(extraResnet)) {
    throw new VaeWeightError(
      extraResnet,
      `present, but layers_per_block ${config.layersPerBlock} allows ${config.layersPerBlock + 1} resnets`,
    );
  }
}
