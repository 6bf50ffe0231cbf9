/**
 * @file The LoRA-enabled transformer graph: {@link buildTransformerGraph} with the {@link LoraRecorder} policy and
 * norm hook, optionally widened for BFL Control LoRAs.
 *
 * Control widening (docs/FLUX_SPEC.md §7.6): a control LoRA's `img_in.lora_A` is `[r, 2·in_channels]`, because the model
 * input becomes `concat(noisy latents, packed control latents)` on the feature axis. The engine is compiled with
 * `x_embedder.weight` zero-padded from `[D, in]` to `[D, in + extra]` (bias unchanged), so with zero LoRA factors it
 * computes exactly the base model whatever the extra channels hold, and a control LoRA adds its delta on the full
 * width through the ordinary `lora_a.x_embedder` `[r, in + extra]` input.
 */

import type { LoraEngineLayout } from '../../../src/shared/vocabulary/lora-layout.ts';
import {
  type FluxTransformerConfig,
  resolveTransformerConfig,
} from '../../../src/shared/vocabulary/transformer-config.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import type { WeightReader } from '../onnx/nn.ts';
import { type LinearPolicy, plainLinear } from './linear-policy.ts';
import { LoraRecorder } from './lora-policy.ts';
import { buildTransformerGraph, type TransformerGraphDescriptor } from './transformer.ts';

/** Options of {@link buildLoraTransformerGraph}. */
export interface LoraTransformerOptions {
  /** Policy of the base layers (the mode's own, e.g. quantised). @default plainLinear */
  linearPolicy?: LinearPolicy;
  fuseProjections?: boolean;
  /** Extra input channels for control LoRAs (64 for FLUX: noisy + control latents). @default 0 */
  controlChannels?: number;
}

/** The descriptor of a LoRA engine's transformer: the usual one plus the layout the host feeds. */
export interface LoraTransformerDescriptor extends TransformerGraphDescriptor {
  lora: LoraEngineLayout;
}

/** A reader whose `x_embedder.weight` `[D, in]` reads as `[D, in + extra]` with zero columns appended. */
export function widenedInputReader(w: WeightReader, extra: number): WeightReader {
  const key = 'x_embedder.weight';
  return {
    has: (name) => w.has(name),
    info: (name) => {
      const info = w.info(name);
      if (name !== key) return info;
      const [out, inF] = info.shape as [number, number];
      return { ...info, shape: [out, inF + extra] };
    },
    readF32: (name) => {
      const data = w.readF32(name);
      if (name !== key) return data;
      const [out, inF] = w.info(name).shape as [number, number];
      const wide = new Float32Array(out * (inF + extra)); // row-major [out, in + extra], new columns 0
      for (let o = 0; o < out; o++) wide.set(data.subarray(o * inF, (o + 1) * inF), o * (inF + extra));
      return wide;
    },
  };
}

/**
 * Adds the LoRA-enabled transformer to `b`; see the file header and `lora-policy.ts` for the extra inputs.
 * @throws TransformerCompileError as {@link buildTransformerGraph} does.
 */
export function buildLoraTransformerGraph(
  b: GraphBuilder,
  w: WeightReader,
  config: FluxTransformerConfig,
  options: LoraTransformerOptions = {},
): LoraTransformerDescriptor {
  const base = resolveTransformerConfig(config);
  const extra = options.controlChannels ?? 0;
  if (!Number.isInteger(extra) || extra < 0)
    throw new Error(`controlChannels must be a non-negative integer, got ${extra}`);
  const recorder = new LoraRecorder(options.linearPolicy ?? plainLinear);
  // out_channels pinned: diffusers defaults it to in_channels, which widening must not change.
  const cfg: FluxTransformerConfig = extra
    ? { ...config, in_channels: base.inChannels + extra, out_channels: config.out_channels ?? base.inChannels }
    : config;
  const descriptor = buildTransformerGraph(b, extra ? widenedInputReader(w, extra) : w, cfg, {
    linearPolicy: recorder.policy,
    fuseProjections: options.fuseProjections,
    normWeightPolicy: recorder.normWeight,
  });
  return { ...descriptor, lora: recorder.layout(base.inChannels + extra, base.inChannels) };
}
