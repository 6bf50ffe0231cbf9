/**
 * @file Turns a LoRA set (parsed LoRAs with strengths) into the extra inputs of a LoRA engine's transformer, as
 * `engines/compiler/flux/lora-policy.ts` declares them. Per layer with `[out, in]` weights:
 *
 *   lora_a.<layer>    [R, in]   the down factors of every LoRA touching the layer, stacked on the rank axis, each
 *                               multiplied by strength·scale (so the graph needs no scale input);
 *   lora_b.<layer>    [out, R]  the up factors; column block j pairs with row block j of lora_a;
 *   lora_bias.<layer> [out]     Σ strength·scale·lora_B.bias, zeros when no LoRA has one;
 *   lora_norm.<norm>  [Dh]      a replaced QK-norm weight, or the base weight.
 *
 * R is the sum of the ranks, 0 for a layer no LoRA targets (the graph's GEMMs then produce exact zeros).
 * Fused layers (XL) list their diffusers parts with row offsets: part p's up factor goes into rows
 * [offset_p, offset_p + out_p) of its column block, every other row of that block stays 0. Parts that share one
 * down factor (kohya / XLabs / BFL `qkv` splits) share one column block, so the fused layer runs at the original
 * rank, not three times it.
 */

import type { HostTensor } from '../../runtime/index.ts';
import type { LoraEngineLayout, LoraLayerLayout } from '../../shared/vocabulary/lora-layout.ts';
import { loraInputNames, loraNormInputName } from '../../shared/vocabulary/lora-layout.ts';
import { LoraError } from './errors.ts';
import type { LoraFactor, ParsedLora } from './types.ts';

/** One member of an active set. */
export interface ActiveLora {
  name: string;
  lora: ParsedLora;
  strength: number;
}

/** A column block of one layer: scaled down rows `[rank, in]` and the up blocks written into it. */
interface ColumnBlock {
  a: Float32Array;
  rank: number;
  ups: { offset: number; factor: LoraFactor }[];
}

/**
 * Builds every LoRA input of `layout` for `set`. `baseNorms` holds the model's QK-norm weights by module.
 * @throws LoraError (`unsupported`) when a LoRA needs a wider input than the engine has, or two LoRAs of the set
 *   replace the same norm with different values.
 */
export function buildLoraFeeds(
  layout: LoraEngineLayout,
  set: readonly ActiveLora[],
  baseNorms: ReadonlyMap<string, Float32Array>,
): Record<string, HostTensor> {
  for (const { name, lora } of set) {
    if (lora.inChannels > layout.inChannels) {
      throw new LoraError(
        'unsupported',
        `needs a ${lora.inChannels}-channel input (control LoRA); this engine takes ${layout.inChannels}`,
        name,
      );
    }
  }
  const feeds: Record<string, HostTensor> = {};
  for (const layer of layout.layers) Object.assign(feeds, layerFeeds(layer, set));
  for (const { module, dim } of layout.norms) {
    let weight = baseNorms.get(module);
    let from: string | undefined;
    for (const { name, lora } of set) {
      const r = lora.norms.get(module);
      if (!r) continue;
      if (from && !sameValues(r, weight!)) {
        throw new LoraError('unsupported', `${from} and ${name} both replace ${module} with different weights`, name, [
          module,
        ]);
      }
      weight = r;
      from = name;
    }
    if (!weight || weight.length !== dim) throw new LoraError('unsupported', `no base weight [${dim}] for ${module}`);
    feeds[loraNormInputName(module)] = { data: weight, dims: [dim] };
  }
  return feeds;
}

function layerFeeds(layer: LoraLayerLayout, set: readonly ActiveLora[]): Record<string, HostTensor> {
  const { inFeatures: inF, outFeatures: out } = layer;
  const parts = layer.parts ?? [{ name: layer.name, offset: 0, outFeatures: out }];
  const blocks: ColumnBlock[] = [];
  let bias: Float32Array | undefined;
  for (const { lora, strength } of set) {
    // Parts of this LoRA that share a down factor (same array, same scale) share a column block.
    const shared = new Map<Float32Array, Map<number, ColumnBlock>>();
    for (const part of parts) {
      const f = lora.factors.get(part.name);
      if (!f) continue;
      const k = strength * f.scale;
      let byScale = shared.get(f.a);
      if (!byScale) {
        byScale = new Map();
        shared.set(f.a, byScale);
      }
      let blk = byScale.get(f.scale);
      if (!blk) {
        blk = { a: scaledDown(f, k, inF), rank: f.rank, ups: [] };
        byScale.set(f.scale, blk);
        blocks.push(blk);
      }
      blk.ups.push({ offset: part.offset, factor: f });
      if (f.bias) {
        bias ??= new Float32Array(out);
        for (let i = 0; i < f.outFeatures; i++) bias[part.offset + i]! += k * f.bias[i]!;
      }
    }
  }
  const rank = blocks.reduce((n, blk) => n + blk.rank, 0);
  const a = new Float32Array(rank * inF); // [R, in]
  const b = new Float32Array(out * rank); // [out, R]
  let col = 0;
  for (const blk of blocks) {
    a.set(blk.a, col * inF);
    for (const { offset, factor } of blk.ups) {
      for (let r = 0; r < factor.outFeatures; r++) {
        b.set(factor.b.subarray(r * factor.rank, (r + 1) * factor.rank), (offset + r) * rank + col);
      }
    }
    col += blk.rank;
  }
  const names = loraInputNames(layer.name);
  return {
    [names.a]: { data: a, dims: [rank, inF] },
    [names.b]: { data: b, dims: [out, rank] },
    [names.bias]: { data: bias ?? new Float32Array(out), dims: [out] },
  };
}

/**
 * `k·A` as `[rank, engineIn]`: a down factor narrower than the engine's layer (a plain LoRA's `x_embedder` on a
 * control-capable engine) is zero-padded on the right, as diffusers pads LoRAs for an expanded base layer.
 */
function scaledDown(f: LoraFactor, k: number, engineIn: number): Float32Array {
  if (f.inFeatures > engineIn) {
    throw new LoraError(
      'unsupported',
      `${f.module}: down factor has ${f.inFeatures} inputs, the engine's layer ${engineIn}`,
    );
  }
  const out = new Float32Array(f.rank * engineIn);
  for (let r = 0; r < f.rank; r++) {
    for (let i = 0; i < f.inFeatures; i++) out[r * engineIn + i] = k * f.a[r * f.inFeatures + i]!;
  }
  return out;
}

function sameValues(x: Float32Array, y: Float32Array): boolean {
  return x.length === y.length && x.every((v, i) => Object.is(v, y[i]));
}
