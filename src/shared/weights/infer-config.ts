/**
 * @file Diffusers configs inferred from tensor names and shapes, for checkpoints that ship without `config.json`
 * (BFL `flux1-*.safetensors` and `ae.safetensors`). Inference reads diffusers names, so it runs on a BFL file
 * through its key map (see `bfl-keymap.ts`) as well as on a bare diffusers file.
 *
 * Shapes fix every size; what shapes cannot tell (RoPE axes, VAE group-norm count, scaling factors) comes from a
 * hint config when one is at hand, else from FLUX.1-dev's values (docs/FLUX_SPEC.md §1.1, §1.2).
 */
import { WeightsError } from './errors.ts';
import type { WeightSource } from './weight-source.ts';

/** A component config as parsed JSON. */
export type ComponentConfig = Readonly<Record<string, unknown>>;

/** FLUX.1-dev's RoPE split of the 128-wide attention head (docs/FLUX_SPEC.md §5.3). */
export const FLUX_AXES_DIMS_ROPE: readonly number[] = Object.freeze([16, 56, 56]);

/** FLUX.1-dev's `vae/config.json` (docs/FLUX_SPEC.md §1.2), the base for an inferred VAE config. */
export const FLUX_VAE_CONFIG: ComponentConfig = Object.freeze({
  _class_name: 'AutoencoderKL',
  in_channels: 3,
  out_channels: 3,
  latent_channels: 16,
  block_out_channels: [128, 256, 512, 512],
  down_block_types: Array(4).fill('DownEncoderBlock2D'),
  up_block_types: Array(4).fill('UpDecoderBlock2D'),
  layers_per_block: 2,
  norm_num_groups: 32,
  act_fn: 'silu',
  sample_size: 1024,
  scaling_factor: 0.3611,
  shift_factor: 0.1159,
  use_quant_conv: false,
  use_post_quant_conv: false,
  mid_block_add_attention: true,
  force_upcast: true,
});

function dim(source: WeightSource, name: string, axis: number): number {
  if (!source.has(name)) throw new WeightsError(source.path, `cannot infer config: tensor '${name}' is missing`);
  const d = source.info(name).shape[axis];
  if (d === undefined) throw new WeightsError(source.path, `cannot infer config: '${name}' has no axis ${axis}`);
  return d;
}

/** Number of distinct `<prefix>N.` indices among `names` (max index + 1, so gaps are caught downstream). */
function countIndexed(names: readonly string[], prefix: string): number {
  let max = -1;
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const i = Number.parseInt(n.slice(prefix.length), 10);
    if (Number.isInteger(i) && i > max) max = i;
  }
  return max + 1;
}

/**
 * Infers a `FluxTransformer2DModel` config from diffusers-named tensors.
 *
 * `hint` (e.g. a repo's `transformer/config.json`) supplies what shapes cannot: `axes_dims_rope`, which otherwise
 * defaults to (16, 56, 56) when the head is 128 wide and is an error for any other head size.
 *
 * @throws WeightsError naming the file when a needed tensor is missing or the RoPE axes cannot be determined.
 */
export function inferTransformerConfig(source: WeightSource, hint: ComponentConfig = {}): ComponentConfig {
  const names = source.names();
  const hidden = dim(source, 'x_embedder.weight', 0);
  const inChannels = dim(source, 'x_embedder.weight', 1);
  const numLayers = countIndexed(names, 'transformer_blocks.');
  const numSingle = countIndexed(names, 'single_transformer_blocks.');
  const headDim = dim(
    source,
    numLayers > 0 ? 'transformer_blocks.0.attn.norm_q.weight' : 'single_transformer_blocks.0.attn.norm_q.weight',
    0,
  );
  if (hidden % headDim !== 0) {
    throw new WeightsError(source.path, `hidden size ${hidden} is not a multiple of the head dim ${headDim}`);
  }
  const outChannels = dim(source, 'proj_out.weight', 0);
  const hinted = hint.axes_dims_rope;
  const axes = Array.isArray(hinted) ? hinted : headDim === 128 ? [...FLUX_AXES_DIMS_ROPE] : undefined;
  if (!axes) {
    throw new WeightsError(
      source.path,
      `cannot infer axes_dims_rope for head dim ${headDim} (FLUX's (16, 56, 56) needs 128); give it in a config override`,
    );
  }
  const axesSum = axes.reduce((a: number, d: unknown) => a + Number(d), 0);
  if (axesSum !== headDim) {
    throw new WeightsError(source.path, `axes_dims_rope [${axes.join(', ')}] must sum to the head dim ${headDim}`);
  }
  return {
    _class_name: 'FluxTransformer2DModel',
    ...hint,
    patch_size: 1,
    in_channels: inChannels,
    // diffusers writes null when out_channels equals in_channels.
    out_channels: outChannels === inChannels ? null : outChannels,
    num_layers: numLayers,
    num_single_layers: numSingle,
    attention_head_dim: headDim,
    num_attention_heads: hidden / headDim,
    joint_attention_dim: dim(source, 'context_embedder.weight', 1),
    pooled_projection_dim: dim(source, 'time_text_embed.text_embedder.linear_1.weight', 1),
    guidance_embeds: source.has('time_text_embed.guidance_embedder.linear_1.weight'),
    axes_dims_rope: axes,
  };
}

/**
 * Infers an `AutoencoderKL` config from diffusers-named tensors: sizes from shapes, everything else from `hint`
 * over FLUX.1-dev's VAE config. `norm_num_groups` cannot be seen in shapes: without a hint it is FLUX's 32.
 *
 * @throws WeightsError naming the file when the decoder tensors needed are missing.
 */
export function inferVaeConfig(source: WeightSource, hint: ComponentConfig = {}): ComponentConfig {
  const names = source.names();
  const numUp = countIndexed(names, 'decoder.up_blocks.');
  if (numUp === 0) throw new WeightsError(source.path, 'cannot infer VAE config: no decoder.up_blocks.* tensors');
  // up_blocks.k decodes to block_out_channels reversed: up_blocks.0 is the deepest (widest) level.
  const blockOut: number[] = [];
  for (let i = 0; i < numUp; i++)
    blockOut.push(dim(source, `decoder.up_blocks.${numUp - 1 - i}.resnets.0.conv1.weight`, 0));
  const resnets = countIndexed(names, 'decoder.up_blocks.0.resnets.');
  const encoderIn = source.has('encoder.conv_in.weight') ? dim(source, 'encoder.conv_in.weight', 1) : undefined;
  return {
    ...FLUX_VAE_CONFIG,
    ...hint,
    in_channels: encoderIn ?? hint.in_channels ?? FLUX_VAE_CONFIG.in_channels,
    out_channels: dim(source, 'decoder.conv_out.weight', 0),
    latent_channels: dim(source, 'decoder.conv_in.weight', 1),
    block_out_channels: blockOut,
    down_block_types: Array(numUp).fill('DownEncoderBlock2D'),
    up_block_types: Array(numUp).fill('UpDecoderBlock2D'),
    layers_per_block: resnets - 1,
    mid_block_add_attention: source.has('decoder.mid_block.attentions.0.to_q.weight'),
    use_quant_conv: source.has('quant_conv.weight'),
    use_post_quant_conv: source.has('post_quant_conv.weight'),
  };
}
