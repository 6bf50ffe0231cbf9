/**
 * @file The building blocks of the AutoencoderKL decoder (docs/FLUX_SPEC.md §6) as ONNX subgraphs: GroupNorm, 2-D
 * convolution, ResnetBlock2D, the mid block's single-head spatial attention and the nearest ×2 upsampler.
 *
 * Every block reproduces the diffusers float32 computation exactly; all activations are NCHW `[B, C, H, W]` with B,
 * H and W dynamic. Weights are read by their diffusers name under a prefix (`decoder.up_blocks.0.resnets.1`, ...) and
 * checked against the channel counts the config implies, so a wrong or truncated checkpoint fails at compile time
 * with a {@link VaeWeightError} naming the tensor, not inside ONNX Runtime. Nodes and initializers are scoped by the
 * module name, so initializer `decoder.conv_in/weight` holds `decoder.conv_in.weight`.
 */
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { type LinearWeights, linear, reshape, sdpaChunked, silu, type WeightReader } from '../onnx/nn.ts';

/** GroupNorm epsilon of every norm in the FLUX VAE (diffusers passes `resnet_eps=1e-6`). */
export const VAE_NORM_EPS = 1e-6;

/** A decoder weight is missing or has a shape the config does not allow; `tensor` names it. */
export class VaeWeightError extends Error {
  override name = 'VaeWeightError';
  constructor(
    /** Full name of the offending tensor. */
    readonly tensor: string,
    message: string,
  ) {
    super(`${tensor}: ${message}`);
  }
}

/** Reads `name` as float32 after checking it exists with exactly `shape`. */
export function readChecked(w: WeightReader, name: string, shape: readonly number[]): Float32Array {
  if (!w.has(name))
    throw new VaeWeightError(name, `missing from the VAE weights (expected shape [${shape.join(',')}])`);
  const actual = w.info(name).shape;
  if (actual.length !== shape.length || actual.some((d, i) => d !== shape[i])) {
    throw new VaeWeightError(name, `expected shape [${shape.join(',')}], got [${actual.join(',')}]`);
  }
  return w.readF32(name);
}

/**
 * GroupNorm(`groups`, C) over NCHW `x`, as `torch.nn.GroupNorm`: statistics per (sample, group) over
 * `C/groups × H × W` values, biased variance, then a per-channel affine.
 *
 * Built as Reshape `[B, G, -1]` → InstanceNormalization (unit scale, zero bias) → Reshape back → Mul/Add with
 * `[C, 1, 1]`. ONNX's own GroupNormalization changed its scale/bias semantics between opsets 18 and 21 and ORT's
 * CPU coverage of it is uneven; InstanceNormalization over the grouped view is the same arithmetic everywhere.
 */
export function groupNorm(
  b: GraphBuilder,
  w: WeightReader,
  x: string,
  prefix: string,
  channels: number,
  groups: number,
) {
  const gamma = readChecked(w, `${prefix}.weight`, [channels]);
  const beta = readChecked(w, `${prefix}.bias`, [channels]);
  return b.scope(prefix, () => {
    const grouped = reshape(b, x, [0, groups, -1]); // [B, G, (C/G)·H·W]
    const ones = b.constF32(new Array(groups).fill(1), [groups]);
    const zeros = b.constF32(new Array(groups).fill(0), [groups]);
    const normed = b.op('InstanceNormalization', [grouped, ones, zeros], { epsilon: { float: VAE_NORM_EPS } });
    const back = b.op('Reshape', [normed, b.op('Shape', [x])]); // [B, C, H, W]
    const scaled = b.op('Mul', [back, b.f32('weight', gamma, [channels, 1, 1])]);
    return b.op('Add', [scaled, b.f32('bias', beta, [channels, 1, 1])]);
  });
}

/** Conv2d `prefix` with a square `kernel`, stride 1 and "same" padding (`kernel >> 1`), bias included. */
export function conv2d(
  b: GraphBuilder,
  w: WeightReader,
  x: string,
  prefix: string,
  inChannels: number,
  outChannels: number,
  kernel: number,
): string {
  const weight = readChecked(w, `${prefix}.weight`, [outChannels, inChannels, kernel, kernel]);
  const bias = readChecked(w, `${prefix}.bias`, [outChannels]);
  const pad = kernel >> 1;
  return b.scope(prefix, () =>
    b.op(
      'Conv',
      [x, b.f32('weight', weight, [outChannels, inChannels, kernel, kernel]), b.f32('bias', bias, [outChannels])],
      { kernel_shape: [kernel, kernel], pads: [pad, pad, pad, pad], strides: [1, 1], dilations: [1, 1], group: 1 },
    ),
  );
}

/**
 * ResnetBlock2D without time embedding (docs/FLUX_SPEC.md §6, output scale 1):
 * `shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x))))))`, where the shortcut is a 1×1 `conv_shortcut` when the
 * channel count changes and the identity otherwise. `[B, inC, H, W]` → `[B, outC, H, W]`.
 */
export function resnetBlock(
  b: GraphBuilder,
  w: WeightReader,
  x: string,
  prefix: string,
  inChannels: number,
  outChannels: number,
  groups: number,
): string {
  let h = silu(b, groupNorm(b, w, x, `${prefix}.norm1`, inChannels, groups));
  h = conv2d(b, w, h, `${prefix}.conv1`, inChannels, outChannels, 3);
  h = silu(b, groupNorm(b, w, h, `${prefix}.norm2`, outChannels, groups));
  h = conv2d(b, w, h, `${prefix}.conv2`, outChannels, outChannels, 3);
  const shortcut =
    inChannels === outChannels ? x : conv2d(b, w, x, `${prefix}.conv_shortcut`, inChannels, outChannels, 1);
  return b.scope(prefix, () => b.op('Add', [shortcut, h]));
}

/**
 * The mid block's attention (diffusers `Attention` with `heads = 1`, `dim_head = C`, residual, rescale 1):
 * GroupNorm → tokens `[B, H·W, C]` → to_q/to_k/to_v → softmax(q·kᵀ/√C)·v → to_out.0 → back to NCHW, plus `x`.
 *
 * Cost: the score matrix is `[B, 1, H·W, H·W]`. At FLUX.1-dev's 1024² output the latent grid is 128², i.e. 16384
 * tokens and a 16384² float32 matrix of 1 GiB per sample, which ORT materialises (with its softmax, 2 GiB; 8 GiB for
 * a batch of 4). `queryChunks` > 1 computes it in blocks of queries ({@link sdpaChunked}: the same numbers, one
 * block's scores at a time). The native CUDA engine computes this attention flash-style instead.
 */
export function midAttention(
  b: GraphBuilder,
  w: WeightReader,
  x: string,
  prefix: string,
  channels: number,
  groups: number,
  queryChunks = 1,
): string {
  // Each projection is a Linear [C, C] with bias (BFL's 1×1 convs arrive squeezed through the weight mapping).
  const proj = (name: string): LinearWeights => ({
    weight: readChecked(w, `${prefix}.${name}.weight`, [channels, channels]),
    bias: readChecked(w, `${prefix}.${name}.bias`, [channels]),
    outFeatures: channels,
    inFeatures: channels,
  });
  const toQ = proj('to_q');
  const toK = proj('to_k');
  const toV = proj('to_v');
  const toOut = proj('to_out.0');
  const normed = groupNorm(b, w, x, `${prefix}.group_norm`, channels, groups);
  return b.scope(prefix, () => {
    // [B, C, H, W] → [B, C, H·W] → [B, H·W, C]: one token per latent pixel.
    const tokens = b.op('Transpose', [reshape(b, normed, [0, channels, -1])], { perm: [0, 2, 1] });
    // One head: view each projection as [B, 1, H·W, C] for the shared SDPA helper.
    const q = reshape(b, linear(b, tokens, toQ, 'to_q'), [0, 1, -1, channels]);
    const k = reshape(b, linear(b, tokens, toK, 'to_k'), [0, 1, -1, channels]);
    const v = reshape(b, linear(b, tokens, toV, 'to_v'), [0, 1, -1, channels]);
    const attn = reshape(b, sdpaChunked(b, q, k, v, 1 / Math.sqrt(channels), queryChunks), [0, -1, channels]); // [B, H·W, C]
    const out = linear(b, attn, toOut, 'to_out.0');
    // [B, H·W, C] → [B, C, H·W] → [B, C, H, W] (the shape of x), then the residual.
    const spatial = b.op('Reshape', [b.op('Transpose', [out], { perm: [0, 2, 1] }), b.op('Shape', [x])]);
    return b.op('Add', [spatial, x]);
  });
}

/**
 * Upsample2D with a conv: nearest-neighbour ×2 (`F.interpolate(scale_factor=2, mode='nearest')`, i.e. output pixel
 * `(y, x)` reads input `(⌊y/2⌋, ⌊x/2⌋)`: Resize with `asymmetric` coordinates and `floor` rounding), then a 3×3 conv.
 * `[B, C, H, W]` → `[B, C, 2H, 2W]`.
 */
export function upsample(b: GraphBuilder, w: WeightReader, x: string, prefix: string, channels: number): string {
  const up = b.scope(prefix, () =>
    b.op('Resize', [x, '', b.constF32([1, 1, 2, 2], [4])], {
      mode: 'nearest',
      coordinate_transformation_mode: 'asymmetric',
      nearest_mode: 'floor',
    }),
  );
  return conv2d(b, w, up, `${prefix}.conv`, channels, channels, 3);
}
