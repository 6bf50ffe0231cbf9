/**
 * @file ONNX graph of the FLUX VAE encoder (`AutoencoderKL.encoder`, the mirror of the decoder of docs/FLUX_SPEC.md §6).
 *
 * Needed only to encode images (BFL Control LoRA control images, docs/FLUX_SPEC.md §7.6), so it is compiled on demand as an
 * extra component, never for text-to-image. Order of the network, for `block_out_channels = [c0, c1, c2, c3]`
 * (FLUX.1-dev: 128, 256, 512, 512), all NCHW:
 *
 *   image [B, 3, H, W] → conv_in (3 → c0)
 *   → down_blocks.i, i = 0..3: `layers_per_block` resnets (c_{i−1} → c_i, then c_i → c_i) and, except the last,
 *     a Downsample2D: zero pad (left 0, right 1, top 0, bottom 1), then a 3×3 stride-2 conv (H → H/2)
 *   → mid block (resnet, single-head attention, resnet at c3)
 *   → conv_norm_out GroupNorm → SiLU → conv_out (c3 → 2·latent_channels): the moments [B, 2L, H/8, W/8]
 *   → split on channels into the mean and the log-variance (diffusers' DiagonalGaussianDistribution).
 *
 * FLUX has no `quant_conv`, so the moments come straight from conv_out. Scaling `(z − shift)·scaling` and packing
 * stay on the TypeScript side, as for decoding.
 */
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { silu, split, type WeightReader } from '../onnx/nn.ts';
import {
  checkVaeConfigFields,
  type GraphDescriptor,
  type GraphTensorSpec,
  VaeConfigError,
  vaeDecoderConfigFromJson,
} from './vae.ts';
import { conv2d, groupNorm, midAttention, readChecked, resnetBlock, VaeWeightError } from './vae-blocks.ts';

/** The encoder-relevant fields of a diffusers `AutoencoderKL` config. */
export interface VaeEncoderConfig {
  /** Channels of the image (`in_channels`): 3. */
  inChannels: number;
  /** Channels of the latent (`latent_channels`): 16 for FLUX; conv_out emits twice as many (mean, log-variance). */
  latentChannels: number;
  /** `block_out_channels`, in the encoder's own order (narrowest first). */
  blockOutChannels: readonly number[];
  /** `layers_per_block`: resnets per down block. */
  layersPerBlock: number;
  /** `norm_num_groups` of every GroupNorm. */
  normNumGroups: number;
  /** `mid_block_add_attention`. */
  midBlockAddAttention: boolean;
}

/** Options of {@link buildVaeEncoderGraph}. */
export interface VaeEncoderGraphOptions {
  /** Prefix of the encoder's tensors in the weight source. @default 'encoder.' */
  prefix?: string;
  /**
   * Also output `latent_logvar`, clamped to [−30, 20] as diffusers' DiagonalGaussianDistribution does (needed to
   * sample the latent rather than take its mean). @default false
   */
  withLogvar?: boolean;
  /** Query blocks of the mid-block attention (`midAttention`): same result, 1/N of its memory. @default 1 */
  attentionQueryChunks?: number;
}

/** diffusers clamps the log-variance to this range before taking `std = exp(logvar / 2)`. */
export const VAE_LOGVAR_RANGE = [-30, 20] as const;

/**
 * Reads the encoder fields of a diffusers `vae/config.json`. The fields shared with the decoder go through
 * {@link vaeDecoderConfigFromJson} (same checks); on top, the down blocks must be `DownEncoderBlock2D` and there
 * must be no `quant_conv`.
 * @throws VaeConfigError naming the field.
 */
export function vaeEncoderConfigFromJson(json: unknown): VaeEncoderConfig {
  const shared = vaeDecoderConfigFromJson(json);
  const cfg = json as Record<string, unknown>;
  const downTypes = cfg.down_block_types;
  const n = shared.blockOutChannels.length;
  if (downTypes !== undefined) {
    if (!Array.isArray(downTypes) || downTypes.length !== n || downTypes.some((t) => t !== 'DownEncoderBlock2D')) {
      throw new VaeConfigError(
        'down_block_types',
        `expected ${n}× 'DownEncoderBlock2D', got ${JSON.stringify(downTypes)}`,
      );
    }
  }
  if (cfg.use_quant_conv === true)
    throw new VaeConfigError('use_quant_conv', 'quant_conv is not supported (FLUX has none)');
  const inChannels = cfg.in_channels ?? 3;
  if (typeof inChannels !== 'number' || !Number.isInteger(inChannels) || inChannels < 1) {
    throw new VaeConfigError('in_channels', `must be a positive integer, got ${JSON.stringify(inChannels)}`);
  }
  return {
    inChannels,
    latentChannels: shared.latentChannels,
    blockOutChannels: shared.blockOutChannels,
    layersPerBlock: shared.layersPerBlock,
    normNumGroups: shared.normNumGroups,
    midBlockAddAttention: shared.midBlockAddAttention,
  };
}

/**
 * Downsample2D with `padding = 0` (the VAE encoder's): `F.pad(x, (0, 1, 0, 1))` then a 3×3 stride-2 conv without
 * padding. ONNX Conv takes the asymmetric pad directly (`pads = [top, left, bottom, right] = [0, 0, 1, 1]`), which is
 * the same zero padding. `[B, C, H, W]` → `[B, C, ⌊(H − 1)/2⌋ + 1, …]`, i.e. H/2 for even H.
 */
export function downsample(b: GraphBuilder, w: WeightReader, x: string, prefix: string, channels: number): string {
  const convPrefix = `${prefix}.conv`;
  const weight = readChecked(w, `${convPrefix}.weight`, [channels, channels, 3, 3]);
  const bias = readChecked(w, `${convPrefix}.bias`, [channels]);
  return b.scope(convPrefix, () =>
    b.op('Conv', [x, b.f32('weight', weight, [channels, channels, 3, 3]), b.f32('bias', bias, [channels])], {
      kernel_shape: [3, 3],
      pads: [0, 0, 1, 1],
      strides: [2, 2],
      dilations: [1, 1],
      group: 1,
    }),
  );
}

function checkConfig(config: VaeEncoderConfig): void {
  checkVaeConfigFields(
    [
      ['in_channels', config.inChannels],
      ['latent_channels', config.latentChannels],
      ['layers_per_block', config.layersPerBlock],
      ['norm_num_groups', config.normNumGroups],
    ],
    config.blockOutChannels,
    config.normNumGroups,
  );
}

/**
 * Emits the encoder into `b`: input `image` float32 `[batch, in_channels, image_height, image_width]` in [−1, 1]
 * (sides multiples of 8 for 4 blocks), output `latent_mean` float32 `[batch, latent_channels, image_height/8,
 * image_width/8]` and, with `withLogvar`, `latent_logvar` of the same shape. Batch and sizes are dynamic.
 *
 * @param w diffusers-named weights of the VAE (`encoder.*`; a BFL `ae.safetensors` through the weights mapping).
 * @throws VaeConfigError on an unusable config; VaeWeightError naming a missing, mis-shaped or unaccounted tensor.
 */
export function buildVaeEncoderGraph(
  b: GraphBuilder,
  w: WeightReader,
  config: VaeEncoderConfig,
  options: VaeEncoderGraphOptions = {},
): GraphDescriptor {
  checkConfig(config);
  const p = options.prefix ?? 'encoder.';
  const groups = config.normNumGroups;
  const chans = config.blockOutChannels;
  const n = chans.length;
  const top = chans[n - 1]!;
  const latent = config.latentChannels;
  checkNoExtraLayers(w, p, config);

  const latentDims = ['batch', latent, 'latent_height', 'latent_width'];
  const inputs: GraphTensorSpec[] = [
    { name: 'image', dtype: 'float32', dims: ['batch', config.inChannels, 'image_height', 'image_width'] },
  ];
  const outputs: GraphTensorSpec[] = [{ name: 'latent_mean', dtype: 'float32', dims: latentDims }];
  if (options.withLogvar) outputs.push({ name: 'latent_logvar', dtype: 'float32', dims: latentDims });
  const image = b.input(inputs[0]!.name, 'float32', inputs[0]!.dims);

  // [B, 3, H, W] → [B, c0, H, W]
  let h = conv2d(b, w, image, `${p}conv_in`, config.inChannels, chans[0]!, 3);

  // down_blocks.i: [B, prev, s, s] → [B, c_i, s/2, s/2] (no downsampling in the last block).
  let prev = chans[0]!;
  for (let i = 0; i < n; i++) {
    const out = chans[i]!;
    const blockPrefix = `${p}down_blocks.${i}`;
    for (let j = 0; j < config.layersPerBlock; j++) {
      h = resnetBlock(b, w, h, `${blockPrefix}.resnets.${j}`, j === 0 ? prev : out, out, groups);
    }
    if (i < n - 1) h = downsample(b, w, h, `${blockPrefix}.downsamplers.0`, out);
    prev = out;
  }

  h = resnetBlock(b, w, h, `${p}mid_block.resnets.0`, top, top, groups);
  if (config.midBlockAddAttention) {
    h = midAttention(b, w, h, `${p}mid_block.attentions.0`, top, groups, options.attentionQueryChunks);
  }
  h = resnetBlock(b, w, h, `${p}mid_block.resnets.1`, top, top, groups);

  // [B, top, h, w] → moments [B, 2L, h, w] → mean [B, L, h, w], logvar [B, L, h, w]
  h = silu(b, groupNorm(b, w, h, `${p}conv_norm_out`, top, groups));
  const moments = conv2d(b, w, h, `${p}conv_out`, top, 2 * latent, 3);
  const [mean, logvar] = b.scope(`${p}moments`, () => split(b, moments, 1, [latent, latent]));
  b.output(mean!, 'latent_mean', 'float32', latentDims);
  if (options.withLogvar) {
    const clamped = b.scope(`${p}moments`, () =>
      b.op('Clip', [logvar!, b.constF32(VAE_LOGVAR_RANGE[0]), b.constF32(VAE_LOGVAR_RANGE[1])]),
    );
    b.output(clamped, 'latent_logvar', 'float32', latentDims);
  }
  return { inputs, outputs };
}

/**
 * A checkpoint with more resnets or down blocks than the config describes, or a downsampler on the last block,
 * would otherwise compile silently into a different network; probe the first tensor past each end.
 */
function checkNoExtraLayers(w: WeightReader, p: string, config: VaeEncoderConfig): void {
  const n = config.blockOutChannels.length;
  const probes: [string, string][] = [
    [`${p}down_blocks.${n}.resnets.0.conv1.weight`, `block_out_channels lists only ${n} down blocks`],
    [
      `${p}down_blocks.0.resnets.${config.layersPerBlock}.conv1.weight`,
      `layers_per_block ${config.layersPerBlock} allows ${config.layersPerBlock} resnets per down block`,
    ],
    [`${p}down_blocks.${n - 1}.downsamplers.0.conv.weight`, 'the last down block has no downsampler'],
  ];
  for (const [name, why] of probes) if (w.has(name)) throw new VaeWeightError(name, `present, but ${why}`);
}
