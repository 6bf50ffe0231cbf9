/**
 * The FLUX transformer graph against the diffusers reference of flux-tiny (`transformer_case.safetensors`), plain
 * and with fused projections, plus batching, dynamic sequence lengths and error reporting.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LinearLayer, type LinearPolicy, plainLinear } from '../../../../engines/compiler/flux/linear-policy.ts';
import { compileTransformer } from '../../../../engines/compiler/flux/transformer.ts';
import type { WeightReader } from '../../../../engines/compiler/onnx/nn.ts';
import { concatIds, ropeTables } from '../../../../src/pipeline/flux/rope.ts';
import { type HostTensor, Session } from '../../../../src/runtime/index.ts';
import { relativeError } from '../../../../src/shared/tensor-metrics.ts';
import {
  type FluxTransformerConfig,
  TransformerCompileError,
} from '../../../../src/shared/vocabulary/transformer-config.ts';
import { openComponentWeights, type WeightSource } from '../../../../src/shared/weights/weight-source.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../../../helpers/paths.ts';
import { type F32Tensor, readSafetensorsF32 } from '../../../helpers/read-safetensors.ts';

const TRANSFORMER_DIR = join(MODEL_DIR, 'transformer');
const config = JSON.parse(readFileSync(join(TRANSFORMER_DIR, 'config.json'), 'utf8')) as FluxTransformerConfig;
const axes = config.axes_dims_rope!;
const fixture = readSafetensorsF32(join(FIXTURES_DIR, 'transformer_case.safetensors'));

function tensor(name: string): F32Tensor {
  const t = fixture[name];
  if (!t) throw new Error(`fixture tensor ${name} missing`);
  return t;
}

/** Deterministic pseudo-random values in [-1, 1). */
function noise(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

interface Sample {
  hidden: Float32Array; // [L, 64]
  context: Float32Array; // [T, 32]
  pooled: Float32Array; // [32]
  timestep: number;
  guidance: number;
}

/** Feeds for a batch of samples sharing ids (and so RoPE tables). */
function feeds(samples: Sample[], txtIds: Float32Array, imgIds: Float32Array): Record<string, HostTensor> {
  const B = samples.length;
  const first = samples[0]!;
  const L = first.hidden.length / 64;
  const T = first.context.length / 32;
  const cat = (get: (s: Sample) => Float32Array) => {
    const parts = samples.map(get);
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let offset = 0;
    for (const p of parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  };
  const rope = ropeTables(concatIds(txtIds, imgIds), axes);
  return {
    hidden_states: { data: cat((s) => s.hidden), dims: [B, L, 64] },
    encoder_hidden_states: { data: cat((s) => s.context), dims: [B, T, 32] },
    pooled_projections: { data: cat((s) => s.pooled), dims: [B, 32] },
    timestep: { data: Float32Array.from(samples, (s) => s.timestep), dims: [B] },
    guidance: { data: Float32Array.from(samples, (s) => s.guidance), dims: [B] },
    rope_cos: { data: rope.cos, dims: [rope.seqLen, rope.dim] },
    rope_sin: { data: rope.sin, dims: [rope.seqLen, rope.dim] },
  };
}

const fixtureSample: Sample = {
  hidden: tensor('hidden_states').data,
  context: tensor('encoder_hidden_states').data,
  pooled: tensor('pooled_projections').data,
  timestep: tensor('timestep').data[0]!,
  guidance: tensor('guidance').data[0]!,
};

async function runSample(session: Session, f: Record<string, HostTensor>): Promise<HostTensor> {
  const out = await session.run(f);
  return out.sample!;
}

describe('FLUX transformer graph (flux-tiny)', () => {
  let dir: string;
  let weights: WeightSource;
  let plain: Session;
  let fused: Session;
  let plainLayers: string[];
  const fusedCalls: LinearLayer[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fluxql-transformer-'));
    weights = openComponentWeights(TRANSFORMER_DIR);
    const a = compileTransformer(weights, config, dir, { fileName: 'plain.onnx' });
    plainLayers = a.descriptor.linearLayers;
    const recording: LinearPolicy = (b, x, layer) => {
      fusedCalls.push(layer);
      return plainLinear(b, x, layer);
    };
    const f = compileTransformer(weights, config, dir, {
      fileName: 'fused.onnx',
      fuseProjections: true,
      linearPolicy: recording,
    });
    plain = await Session.create('transformer', a.modelPath, { threads: 1 });
    fused = await Session.create('transformer', f.modelPath, { threads: 1 });
  });

  afterAll(async () => {
    await plain?.release();
    await fused?.release();
    weights?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const fixtureFeeds = () => feeds([fixtureSample], tensor('txt_ids').data, tensor('img_ids').data);

  it('matches the diffusers output', async () => {
    const out = await runSample(plain, fixtureFeeds());
    expect(out.dims).toEqual([1, 16, 64]);
    const err = relativeError(out.data as Float32Array, tensor('output').data);
    console.info(`transformer (plain) rel error vs diffusers: ${err.toExponential(3)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
  });

  it('matches the diffusers output with fused projections', async () => {
    const out = await runSample(fused, fixtureFeeds());
    const err = relativeError(out.data as Float32Array, tensor('output').data);
    console.info(`transformer (fused) rel error vs diffusers: ${err.toExponential(3)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
  });

  it('routes every Linear of the checkpoint through the policy exactly once, by diffusers name', () => {
    const linearModules = weights
      .names()
      .filter((n) => n.endsWith('.weight') && weights.info(n).shape.length === 2)
      .map((n) => n.slice(0, -'.weight'.length))
      .sort();
    expect([...plainLayers].sort()).toEqual(linearModules);

    // Fused: the parts of all policy calls cover the same modules, and the fused layers carry their part layout.
    const covered = fusedCalls.flatMap((l) => (l.parts ? l.parts.map((p) => p.name) : [l.name])).sort();
    expect(covered).toEqual(linearModules);
    const qkv = fusedCalls.find((l) => l.name === 'transformer_blocks.0.attn.to_qkv');
    expect(qkv?.parts).toEqual([
      { name: 'transformer_blocks.0.attn.to_q', offset: 0, outFeatures: 32 },
      { name: 'transformer_blocks.0.attn.to_k', offset: 32, outFeatures: 32 },
      { name: 'transformer_blocks.0.attn.to_v', offset: 64, outFeatures: 32 },
    ]);
    expect(qkv?.weights.outFeatures).toBe(96);
    const single = fusedCalls.find((l) => l.name === 'single_transformer_blocks.2.to_qkv_mlp');
    expect(single?.parts?.map((p) => p.name.split('.').slice(2).join('.'))).toEqual([
      'attn.to_q',
      'attn.to_k',
      'attn.to_v',
      'proj_mlp',
    ]);
    expect(fusedCalls.some((l) => l.name === 'transformer_blocks.1.norm1_joint.linear')).toBe(true);
  });

  it('runs a batch of samples at different timesteps like separate runs', async () => {
    const other: Sample = {
      hidden: noise(16 * 64, 7),
      context: noise(24 * 32, 8),
      pooled: noise(32, 9),
      timestep: 0.31,
      guidance: 2.0,
    };
    const txt = tensor('txt_ids').data;
    const img = tensor('img_ids').data;
    for (const session of [plain, fused]) {
      const batch = await runSample(session, feeds([fixtureSample, other], txt, img));
      expect(batch.dims).toEqual([2, 16, 64]);
      const one = (await runSample(session, feeds([fixtureSample], txt, img))).data as Float32Array;
      const two = (await runSample(session, feeds([other], txt, img))).data as Float32Array;
      const data = batch.data as Float32Array;
      expect(relativeError(data.subarray(0, one.length), one)).toBeLessThan(1e-6);
      expect(relativeError(data.subarray(one.length), two)).toBeLessThan(1e-6);
      // The two samples really differ (a per-sample timestep, not a broadcast of the first).
      expect(relativeError(one, two)).toBeGreaterThan(0.1);
    }
  });

  it('accepts any image and text length (32×48 latent grid, 7 text tokens)', async () => {
    const [gh, gw] = [32 / 2, 48 / 2]; // packed 2×2: 16 × 24 = 384 image tokens
    const L = gh * gw;
    const T = 7;
    const imgIds = new Float32Array(L * 3);
    for (let r = 0; r < gh; r++) {
      for (let c = 0; c < gw; c++) imgIds.set([0, r, c], (r * gw + c) * 3);
    }
    const sample: Sample = {
      hidden: noise(L * 64, 1),
      context: noise(T * 32, 2),
      pooled: noise(32, 3),
      timestep: 0.7,
      guidance: 3.5,
    };
    const f = feeds([sample], new Float32Array(T * 3), imgIds);
    const a = await runSample(plain, f);
    const b = await runSample(fused, f);
    expect(a.dims).toEqual([1, L, 64]);
    expect((a.data as Float32Array).every(Number.isFinite)).toBe(true);
    expect(relativeError(b.data as Float32Array, a.data as Float32Array)).toBeLessThan(1e-5);
  });

  it('has no guidance input when the config has no guidance embedding (schnell-style)', async () => {
    const d = mkdtempSync(join(tmpdir(), 'fluxql-transformer-noguid-'));
    try {
      const c = compileTransformer(weights, { ...config, guidance_embeds: false }, d);
      expect(c.descriptor.inputs.map((i) => i.name)).toEqual([
        'hidden_states',
        'encoder_hidden_states',
        'pooled_projections',
        'timestep',
        'rope_cos',
        'rope_sin',
      ]);
      expect(c.descriptor.linearLayers.some((n) => n.includes('guidance_embedder'))).toBe(false);
      const s = await Session.create('transformer', c.modelPath, { threads: 1 });
      const { guidance: _, ...f } = fixtureFeeds();
      const out = await runSample(s, f);
      await s.release();
      expect(out.dims).toEqual([1, 16, 64]);
      // Dropping the guidance term changes the conditioning, so the output must move away from the reference.
      expect(relativeError(out.data as Float32Array, tensor('output').data)).toBeGreaterThan(1e-3);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('names the tensor when weights do not match the config', () => {
    const dirErr = mkdtempSync(join(tmpdir(), 'fluxql-transformer-bad-'));
    try {
      const build =
        (cfg: FluxTransformerConfig, w: WeightReader = weights) =>
        () =>
          compileTransformer(w, cfg, dirErr);
      expect(build({ ...config, pooled_projection_dim: 48 })).toThrow(
        /time_text_embed\.text_embedder\.linear_1\.weight: shape \[32, 32\] does not match the config, expected \[32, 48\]/,
      );
      expect(build({ ...config, num_layers: 3 })).toThrow(/transformer_blocks\.2\.norm1\.linear\.weight: missing/);
      expect(build({ ...config, axes_dims_rope: [4, 4, 4] })).toThrow(TransformerCompileError);
      // A checkpoint tensor with a wrong shape, the config being right.
      const bad = 'single_transformer_blocks.1.attn.norm_k.weight';
      const wrong: WeightReader = {
        has: (n) => weights.has(n),
        info: (n) => (n === bad ? { shape: [8] } : weights.info(n)),
        readF32: (n) => weights.readF32(n),
      };
      expect(build(config, wrong)).toThrow(`${bad}: shape [8] does not match the config, expected [16]`);
    } finally {
      rmSync(dirErr, { recursive: true, force: true });
    }
  });
});
