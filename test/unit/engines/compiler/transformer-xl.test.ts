/**
 * The XL transformer graph (fused projections + contrib-op attention + one modulation GEMM) and the step-cache split
 * (head after the first block, tail for the rest) on flux-tiny, against the reference graph and diffusers.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileTransformer } from '../../../../engines/compiler/flux/transformer.ts';
import { MODULATION_LAYER } from '../../../../engines/compiler/flux/transformer-fused.ts';
import { buildModulationGraph } from '../../../../engines/compiler/flux/transformer-modulation.ts';
import { buildTransformerHead, buildTransformerTail } from '../../../../engines/compiler/flux/transformer-split.ts';
import { GraphBuilder } from '../../../../engines/compiler/onnx/graph-builder.ts';
import { Session } from '../../../../src/runtime/index.ts';
import { relativeError } from '../../../../src/shared/tensor-metrics.ts';
import { resolveMode } from '../../../../src/shared/vocabulary/modes.ts';
import { openComponentWeights, type WeightSource } from '../../../../src/shared/weights/weight-source.ts';
import {
  fixtureTensor,
  fixtureTransformerFeeds,
  TRANSFORMER_DIR,
  transformerConfig,
} from '../../../helpers/transformer-fixture.ts';

const config = transformerConfig;
const t = fixtureTensor;

describe('XL transformer graph and step-cache split (flux-tiny)', () => {
  let dir: string;
  let weights: WeightSource;
  let plain: Session;
  let xl: Session;
  let head: Session;
  let tail: Session;
  let xlLayers: string[];
  let xlMod: Session;
  let modulation: Session;
  let xlModLayers: string[];
  let modLayers: string[];
  const xlOptions = resolveMode('XL').transformer;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fluxql-xl-'));
    weights = openComponentWeights(TRANSFORMER_DIR);
    const a = compileTransformer(weights, config, dir, { fileName: 'plain.onnx' });
    const x = compileTransformer(weights, config, dir, { fileName: 'xl.onnx', ...xlOptions });
    xlLayers = x.descriptor.linearLayers;
    const split = (name: string, build: typeof buildTransformerHead) => {
      const b = new GraphBuilder({ name });
      build(b, weights, config, xlOptions);
      writeFileSync(join(dir, `${name}.onnx`), b.encode());
      return join(dir, `${name}.onnx`);
    };
    plain = await Session.create('plain', a.modelPath, { threads: 1 });
    xl = await Session.create('xl', x.modelPath, { threads: 1 });
    head = await Session.create('head', split('head', buildTransformerHead), { threads: 1 });
    tail = await Session.create('tail', split('tail', buildTransformerTail), { threads: 1 });
    const xm = compileTransformer(weights, config, dir, {
      fileName: 'xl-mod.onnx',
      ...xlOptions,
      modulationInput: true,
    });
    xlModLayers = xm.descriptor.linearLayers;
    xlMod = await Session.create('xl-mod', xm.modelPath, { threads: 1 });
    const mb = new GraphBuilder({ name: 'transformer_modulation' });
    modLayers = buildModulationGraph(mb, weights, config).linearLayers;
    writeFileSync(join(dir, 'modulation.onnx'), mb.encode());
    modulation = await Session.create('modulation', join(dir, 'modulation.onnx'), { threads: 1 });
  });

  afterAll(async () => {
    for (const s of [plain, xl, head, tail, xlMod, modulation]) await s?.release();
    weights?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('computes the reference values within float rounding (and diffusers within 1e-4)', async () => {
    const ref = (await plain.run(fixtureTransformerFeeds())).sample!.data as Float32Array;
    const out = (await xl.run(fixtureTransformerFeeds())).sample!.data as Float32Array;
    expect(relativeError(out, ref)).toBeLessThan(1e-5);
    expect(relativeError(out, t('output'))).toBeLessThan(1e-4);
  });

  it('emits contrib attention and one modulation layer holding every AdaLayerNorm Linear', () => {
    const model = readFileSync(join(dir, 'xl.onnx'));
    for (const op of ['MultiHeadAttention', 'RotaryEmbedding', 'SimplifiedLayerNormalization']) {
      expect(model.includes(Buffer.from(op))).toBe(true);
    }
    expect(xlLayers.filter((l) => l === MODULATION_LAYER)).toHaveLength(1);
    expect(xlLayers.some((l) => l.endsWith('norm1_joint.linear') || l.endsWith('.norm.linear'))).toBe(false);
    expect(xlLayers).not.toContain('norm_out.linear');
  });

  it('head then tail gives the full graph output, and the cached path reproduces it from the tail residual', async () => {
    const feeds = fixtureTransformerFeeds();
    const full = (await xl.run(feeds)).sample!.data as Float32Array;
    const zeros = { data: new Float32Array(16 * 32), dims: [1, 16, 32] };
    const h = await head.run({ ...feeds, cached_residual: zeros });
    const out = await tail.run({
      hidden: h.hidden!,
      encoder_hidden: h.encoder_hidden!,
      silu_temb: h.silu_temb!,
      rope_cos: feeds.rope_cos!,
      rope_sin: feeds.rope_sin!,
    });
    expect(relativeError(out.sample!.data as Float32Array, full)).toBeLessThan(1e-6);
    // Reusing this step's own tail residual must give this step's output: hidden + residual = final image stream.
    const again = await head.run({ ...feeds, cached_residual: out.residual! });
    expect(relativeError(again.cached_sample!.data as Float32Array, full)).toBeLessThan(1e-5);
    expect(h.first_residual!.dims).toEqual([1, 16, 32]);
  });

  it('with the modulation as an input, the modulation graph + transformer give the full graph output', async () => {
    const feeds = fixtureTransformerFeeds();
    const full = (await xl.run(feeds)).sample!.data as Float32Array;
    const { hidden_states, encoder_hidden_states, rope_cos, rope_sin, pooled_projections, timestep, guidance } = feeds;
    const m = (
      await modulation.run({ pooled_projections: pooled_projections!, timestep: timestep!, guidance: guidance! })
    ).modulation!;
    const out = await xlMod.run({
      hidden_states: hidden_states!,
      encoder_hidden_states: encoder_hidden_states!,
      rope_cos: rope_cos!,
      rope_sin: rope_sin!,
      modulation: m,
    });
    expect(relativeError(out.sample!.data as Float32Array, full)).toBeLessThan(1e-6);
    expect(relativeError(out.sample!.data as Float32Array, t('output'))).toBeLessThan(1e-4);
    // The GEMM lives in the modulation graph only; the transformer graph has no conditioning embedding left.
    expect(modLayers.filter((l) => l === MODULATION_LAYER)).toHaveLength(1);
    expect(xlModLayers).not.toContain(MODULATION_LAYER);
    expect(xlModLayers.some((l) => l.startsWith('time_text_embed.'))).toBe(false);
  });

  it("computes many steps' modulation rows at once, each equal to its row computed alone", async () => {
    const ts = Float32Array.of(1, 0.75, 0.5, 0.125);
    const gs = Float32Array.of(3.5, 3.5, 4, 1);
    const pooled = t('pooled_projections');
    const pooledN = new Float32Array(ts.length * pooled.length);
    for (let i = 0; i < ts.length; i++) pooledN.set(pooled, i * pooled.length);
    const all = (
      await modulation.run({
        timestep: { data: ts, dims: [ts.length] },
        guidance: { data: gs, dims: [ts.length] },
        pooled_projections: { data: pooledN, dims: [ts.length, pooled.length] },
      })
    ).modulation!;
    const width = all.dims[1] as number;
    expect(all.dims).toEqual([ts.length, width]);
    for (let i = 0; i < ts.length; i++) {
      const one = (
        await modulation.run({
          timestep: { data: ts.subarray(i, i + 1), dims: [1] },
          guidance: { data: gs.subarray(i, i + 1), dims: [1] },
          pooled_projections: { data: pooled, dims: [1, pooled.length] },
        })
      ).modulation!.data as Float32Array;
      expect(relativeError((all.data as Float32Array).subarray(i * width, (i + 1) * width), one)).toBeLessThan(1e-6);
    }
  });
});
