/**
 * Feed building: several LoRAs stacked on the rank axis with their strengths folded into the down factors, fused
 * layers' block structure (one shared column block for a shared down factor), rank 0 for untargeted layers,
 * zero-padding onto a widened input, and QK-norm replacement.
 */
import { describe, expect, it } from 'vitest';
import { LoraError } from '../../../../src/pipeline/lora/errors.ts';
import { buildLoraFeeds } from '../../../../src/pipeline/lora/feeds.ts';
import type { LoraFactor, ParsedLora } from '../../../../src/pipeline/lora/types.ts';
import type { HostTensor } from '../../../../src/runtime/index.ts';
import type { LoraEngineLayout } from '../../../../src/shared/vocabulary/lora-layout.ts';
import { noise } from '../../../helpers/lora.ts';

function f(
  module: string,
  rank: number,
  inF: number,
  out: number,
  seed: number,
  extra: Partial<LoraFactor> = {},
): LoraFactor {
  return {
    module,
    a: noise(rank * inF, seed),
    b: noise(out * rank, seed + 1),
    rank,
    inFeatures: inF,
    outFeatures: out,
    scale: 1,
    ...extra,
  };
}
function lora(factors: LoraFactor[], norms: [string, Float32Array][] = [], inChannels = 4): ParsedLora {
  return {
    format: 'diffusers',
    factors: new Map(factors.map((x) => [x.module, x])),
    norms: new Map(norms),
    inChannels,
    ignoredKeys: [],
  };
}
/** Δ = B·A `[out, in]` of a feed pair, in float64. */
function delta(feeds: Record<string, HostTensor>, layer: string): number[] {
  const a = feeds[`lora_a.${layer}`]!;
  const b = feeds[`lora_b.${layer}`]!;
  const [r, inF] = a.dims as [number, number];
  const out = b.dims[0]!;
  const d: number[] = [];
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inF; i++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += Number(b.data[o * r + k]) * Number(a.data[k * inF + i]);
      d.push(s);
    }
  return d;
}
function expectedDelta(x: LoraFactor, k: number, inF = x.inFeatures): number[] {
  const d: number[] = [];
  for (let o = 0; o < x.outFeatures; o++)
    for (let i = 0; i < inF; i++) {
      let s = 0;
      if (i < x.inFeatures) for (let r = 0; r < x.rank; r++) s += x.b[o * x.rank + r]! * x.a[r * x.inFeatures + i]!;
      d.push(k * s);
    }
  return d;
}
const close = (a: number[], b: number[]) => {
  expect(a.length).toBe(b.length);
  for (const [i, v] of a.entries()) expect(v).toBeCloseTo(b[i]!, 5);
};

const layout: LoraEngineLayout = {
  version: 1,
  layers: [
    { name: 'x_embedder', inFeatures: 8, outFeatures: 3 },
    { name: 'lin', inFeatures: 5, outFeatures: 6 },
    {
      name: 'blk.to_qkv',
      inFeatures: 5,
      outFeatures: 6,
      parts: [
        { name: 'blk.to_q', offset: 0, outFeatures: 2 },
        { name: 'blk.to_k', offset: 2, outFeatures: 2 },
        { name: 'blk.to_v', offset: 4, outFeatures: 2 },
      ],
    },
  ],
  norms: [{ module: 'blk.norm_q', dim: 2 }],
  inChannels: 8,
  baseInChannels: 4,
};
const baseNorms = new Map([['blk.norm_q', Float32Array.of(1, 1)]]);

describe('buildLoraFeeds', () => {
  it('stacks several LoRAs on the rank axis with strength × scale', () => {
    const l1 = f('lin', 2, 5, 6, 1, { scale: 0.5 });
    const l2 = f('lin', 3, 5, 6, 7);
    const feeds = buildLoraFeeds(
      layout,
      [
        { name: 'a', lora: lora([l1]), strength: 0.8 },
        { name: 'b', lora: lora([l2]), strength: -1.5 },
      ],
      baseNorms,
    );
    expect(feeds['lora_a.lin']!.dims).toEqual([5, 5]);
    expect(feeds['lora_b.lin']!.dims).toEqual([6, 5]);
    close(
      delta(feeds, 'lin'),
      expectedDelta(l1, 0.4).map((v, i) => v + expectedDelta(l2, -1.5)[i]!),
    );
    // Untargeted layers: rank 0 and a zero bias.
    expect(feeds['lora_a.blk.to_qkv']!.dims).toEqual([0, 5]);
    expect(Array.from(feeds['lora_bias.lin']!.data as Float32Array)).toEqual(new Array(6).fill(0));
  });

  it('writes fused parts into their rows and shares one column block per shared down factor', () => {
    const shared = noise(2 * 5, 3);
    const q = f('blk.to_q', 2, 5, 2, 10, { a: shared, bias: Float32Array.of(1, 2) });
    const k = f('blk.to_k', 2, 5, 2, 20, { a: shared });
    const v = f('blk.to_v', 1, 5, 2, 30);
    const feeds = buildLoraFeeds(layout, [{ name: 'a', lora: lora([q, k, v]), strength: 2 }], baseNorms);
    expect(feeds['lora_a.blk.to_qkv']!.dims).toEqual([3, 5]); // q and k share rank 2, v adds 1
    close(delta(feeds, 'blk.to_qkv'), [...expectedDelta(q, 2), ...expectedDelta(k, 2), ...expectedDelta(v, 2)]);
    expect(Array.from(feeds['lora_bias.blk.to_qkv']!.data as Float32Array)).toEqual([2, 4, 0, 0, 0, 0]);
  });

  it('zero-pads a narrower x_embedder down factor onto a widened input', () => {
    const x = f('x_embedder', 2, 4, 3, 5);
    const feeds = buildLoraFeeds(layout, [{ name: 'a', lora: lora([x]), strength: 1 }], baseNorms);
    expect(feeds['lora_a.x_embedder']!.dims).toEqual([2, 8]);
    close(delta(feeds, 'x_embedder'), expectedDelta(x, 1, 8));
    const narrow = { ...layout, inChannels: 4 };
    expect(() => buildLoraFeeds(narrow, [{ name: 'c', lora: lora([], [], 8), strength: 1 }], baseNorms)).toThrow(
      LoraError,
    );
  });

  it('feeds base norms unless a LoRA replaces them, and refuses conflicting replacements', () => {
    expect(Array.from(buildLoraFeeds(layout, [], baseNorms)['lora_norm.blk.norm_q']!.data as Float32Array)).toEqual([
      1, 1,
    ]);
    const r1 = lora([], [['blk.norm_q', Float32Array.of(3, 4)]]);
    const r2 = lora([], [['blk.norm_q', Float32Array.of(5, 6)]]);
    expect(
      Array.from(
        buildLoraFeeds(layout, [{ name: 'a', lora: r1, strength: 0.1 }], baseNorms)['lora_norm.blk.norm_q']!
          .data as Float32Array,
      ),
    ).toEqual([3, 4]);
    expect(() =>
      buildLoraFeeds(
        layout,
        [
          { name: 'a', lora: r1, strength: 1 },
          { name: 'b', lora: r2, strength: 1 },
        ],
        baseNorms,
      ),
    ).toThrow(/both replace/);
  });
});
