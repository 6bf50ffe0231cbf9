/**
 * @file The planner's measurements on real ORT runs:
 *
 * - errors: one calibration graph per compression algorithm, the XL transformer with every Linear gated between its
 *   float32 output and that algorithm's (`gated-policy.ts`); a one-hot gate gives the relative output error one
 *   (layer, algorithm) causes alone, a multi-hot gate the error of a whole plan.
 * - times: each distinct Linear shape (tokens × in × out) as a one-node graph per algorithm, the median of a few
 *   timed runs after a warm-up; a layer's gain is float32 time minus the algorithm's time on its shape.
 *
 * The transformer forward at hundreds of layer variants is the expensive part; see `plan.ts` for what is skipped.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type HostTensor, Session } from '../../../src/runtime/index.ts';
import { relativeError } from '../../../src/shared/tensor-metrics.ts';
import type { FluxTransformerConfig } from '../../../src/shared/vocabulary/transformer-config.ts';
import { buildTransformerGraph, type TransformerGraphOptions } from '../flux/transformer.ts';
import { ExternalDataWriter } from '../onnx/external-data.ts';
import { GraphBuilder } from '../onnx/graph-builder.ts';
import type { WeightReader } from '../onnx/nn.ts';
import { type Algorithm, algorithmPolicy } from './algorithms.ts';
import { GATE_INPUT, type GateLayout, gatedPolicy, gateFor, gateIndex } from './gated-policy.ts';

/** Feeds of the full transformer graph (all samples of the calibration set in one batch). */
export type TransformerFeeds = Record<string, HostTensor>;

/** A loaded calibration graph: the transformer with every Linear gated between fp32 and `algorithms`. */
export class CalibrationGraph {
  private constructor(
    readonly layout: GateLayout,
    private readonly session: Session,
    private readonly dir: string,
  ) {}

  /** Builds and loads the gated graph (written to a temporary folder, removed on close). */
  static async create(
    w: WeightReader,
    config: FluxTransformerConfig,
    graph: TransformerGraphOptions,
    algorithms: readonly Algorithm[],
    threads?: number,
  ): Promise<CalibrationGraph> {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-calib-'));
    const data = new ExternalDataWriter(join(dir, 'model.onnx.data'));
    const { policy, layout } = gatedPolicy(algorithms, graph.linearPolicy);
    try {
      const b = new GraphBuilder({ name: 'calibration', externalData: data });
      buildTransformerGraph(b, w, config, { ...graph, linearPolicy: policy });
      writeFileSync(join(dir, 'model.onnx'), b.encode({ component: 'calibration' }));
    } finally {
      data.close();
    }
    const session = await Session.create(`calibration-${algorithms.join('+')}`, join(dir, 'model.onnx'), { threads });
    return new CalibrationGraph(layout, session, dir);
  }

  /** The `sample` output with the given gate. */
  async run(feeds: TransformerFeeds, gate: Float32Array): Promise<Float32Array> {
    const out = await this.session.run({ ...feeds, [GATE_INPUT]: { data: gate, dims: [gate.length] } });
    return out.sample!.data as Float32Array;
  }

  /** Output with every layer in float32 (the reference). */
  reference(feeds: TransformerFeeds): Promise<Float32Array> {
    return this.run(feeds, new Float32Array(this.layout.layers.length * this.layout.algorithms.length));
  }

  /** Relative output error when only `layers[i]` uses `algorithm`. */
  async layerError(feeds: TransformerFeeds, ref: Float32Array, i: number, algorithm: Algorithm): Promise<number> {
    const gate = new Float32Array(this.layout.layers.length * this.layout.algorithms.length);
    gate[gateIndex(this.layout, i, algorithm)] = 1;
    return relativeError(await this.run(feeds, gate), ref);
  }

  /** Relative output error of a whole plan (`layer → algorithm`; every algorithm must be in this graph). */
  async planError(
    feeds: TransformerFeeds,
    ref: Float32Array,
    choices: Readonly<Record<string, string>>,
  ): Promise<number> {
    return relativeError(await this.run(feeds, gateFor(this.layout, choices)), ref);
  }

  async close(): Promise<void> {
    await this.session.release();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A Linear's shape as the latency model sees it. */
export interface LinearShape {
  tokens: number;
  inFeatures: number;
  outFeatures: number;
}

/** Median ms of one Linear of `shape` under `algorithm` (random weights: the time does not depend on values). */
export async function timeLinear(
  shape: LinearShape,
  algorithm: Algorithm,
  opts: { threads?: number; repeats?: number } = {},
): Promise<number> {
  const { tokens, inFeatures: k, outFeatures: n } = shape;
  const b = new GraphBuilder({ name: 'linear_timing' });
  b.input('x', 'float32', [1, tokens, k]);
  let s = 12345;
  const weight = Float32Array.from({ length: n * k }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 0.1;
  });
  const y = algorithmPolicy(algorithm)(b, 'x', { name: 'layer', weights: { weight, outFeatures: n, inFeatures: k } });
  b.output(y, 'y', 'float32', [1, tokens, n]);
  const dir = mkdtempSync(join(tmpdir(), 'fluxql-timing-'));
  const path = join(dir, 'model.onnx');
  writeFileSync(path, b.encode());
  const session = await Session.create('linear-timing', path, { threads: opts.threads });
  try {
    const x = Float32Array.from({ length: tokens * k }, (_, i) => Math.sin(i));
    const feeds = { x: { data: x, dims: [1, tokens, k] } };
    await session.run(feeds); // warm-up: allocations, kernel selection
    const ms: number[] = [];
    for (let r = 0; r < (opts.repeats ?? 5); r++) {
      const t0 = performance.now();
      await session.run(feeds);
      ms.push(performance.now() - t0);
    }
    ms.sort((a, c) => a - c);
    return ms[Math.floor(ms.length / 2)]!;
  } finally {
    await session.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Tokens a Linear of the XL graph multiplies per sample, from its diffusers name: image-stream layers L, text-stream
 * layers T, single-block layers S = T + L, conditioning (modulation, time/text embedders) 1.
 */
export function tokensOf(layer: string, image: number, text: number): number {
  if (layer === 'modulation' || layer.startsWith('time_text_embed') || layer.endsWith('norm_out.linear')) return 1;
  if (/\.(norm1|norm1_context|norm1_joint|norm)\.linear$/.test(layer)) return 1;
  if (layer.startsWith('single_transformer_blocks.')) return image + text;
  if (layer === 'context_embedder' || /\.(attn\.to_added_qkv|attn\.add_[qkv]_proj|attn\.to_add_out)$/.test(layer))
    return text;
  if (/\.ff_context\./.test(layer)) return text;
  return image; // x_embedder, proj_out, image-stream attention and ff
}
