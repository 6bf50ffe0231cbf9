/**
 * @file The VAE encoder graph against an independent float64 reference (test/helpers/vae-encoder-reference.ts):
 * there is no diffusers fixture for the encoder, so the same modules are recomputed with plain loops on a small
 * batch. Also: encode → decode is shape-correct on flux-tiny, and bad configs / weights fail naming the culprit.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildVaeDecoderGraph,
  VaeConfigError,
  vaeDecoderConfigFromJson,
} from '../../../../engines/compiler/flux/vae.ts';
import { VaeWeightError } from '../../../../engines/compiler/flux/vae-blocks.ts';
import { buildVaeEncoderGraph, vaeEncoderConfigFromJson } from '../../../../engines/compiler/flux/vae-encoder.ts';
import { ExternalDataWriter } from '../../../../engines/compiler/onnx/external-data.ts';
import { GraphBuilder } from '../../../../engines/compiler/onnx/graph-builder.ts';
import type { WeightReader } from '../../../../engines/compiler/onnx/nn.ts';
import { Session } from '../../../../src/runtime/index.ts';
import { relativeError } from '../../../../src/shared/tensor-metrics.ts';
import { openBflVae } from '../../../../src/shared/weights/bfl-keymap.ts';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import { openComponentWeights, type WeightSource } from '../../../../src/shared/weights/weight-source.ts';
import { loadDiffusers, vaeToBfl, writeTensors } from '../../../helpers/bfl-fixtures.ts';
import { MODEL_DIR } from '../../../helpers/paths.ts';
import { encodeReference } from '../../../helpers/vae-encoder-reference.ts';

const VAE_DIR = join(MODEL_DIR, 'vae');
const vaeJson = JSON.parse(readFileSync(join(VAE_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
const config = vaeEncoderConfigFromJson(vaeJson);

function asReader(source: WeightSource): WeightReader {
  return {
    has: (n) => source.has(n),
    info: (n) => ({ shape: [...source.info(n).shape] }),
    readF32: (n) => source.readF32(n),
  };
}

/** A smooth, batch-dependent test image in [−1, 1]: `[B, 3, H, W]`. */
function testImage(b: number, h: number, w: number): Float32Array {
  const x = new Float32Array(b * 3 * h * w);
  for (let i = 0; i < x.length; i++) {
    const px = i % w;
    const py = Math.floor(i / w) % h;
    const c = Math.floor(i / (w * h)) % 3;
    const n = Math.floor(i / (3 * w * h));
    x[i] = Math.sin(0.7 * px + 1.3 * py + 2.1 * c + 0.9 * n) * 0.9;
  }
  return x;
}

describe('VAE encoder graph (flux-tiny vs float64 reference)', () => {
  let dir: string;
  let source: WeightSource;
  let weights: WeightReader;
  let session: Session;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fluxql-vae-enc-'));
    source = openComponentWeights(VAE_DIR);
    weights = asReader(source);
    const ext = new ExternalDataWriter(join(dir, 'vae_encoder.onnx.data'));
    const b = new GraphBuilder({ name: 'vae_encoder', externalData: ext });
    buildVaeEncoderGraph(b, weights, config, { withLogvar: true });
    writeFileSync(join(dir, 'vae_encoder.onnx'), b.encode());
    ext.close();
    session = await Session.create('vae_encoder', join(dir, 'vae_encoder.onnx'), { threads: 1 });
  });

  afterAll(async () => {
    await session?.release();
    source?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reads the encoder fields of the config', () => {
    expect(config).toEqual({
      inChannels: 3,
      latentChannels: 16,
      blockOutChannels: [16, 16, 32, 32],
      layersPerBlock: 1,
      normNumGroups: 8,
      midBlockAddAttention: true,
    });
  });

  it('describes its input and outputs', () => {
    const desc = buildVaeEncoderGraph(new GraphBuilder({ name: 'e' }), weights, config);
    expect(desc).toEqual({
      inputs: [{ name: 'image', dtype: 'float32', dims: ['batch', 3, 'image_height', 'image_width'] }],
      outputs: [{ name: 'latent_mean', dtype: 'float32', dims: ['batch', 16, 'latent_height', 'latent_width'] }],
    });
    expect(session.inputNames).toEqual(['image']);
    expect(session.outputNames).toEqual(['latent_mean', 'latent_logvar']);
  });

  it('matches the float64 reference on a non-square batch of 2 (relative error ≤ 1e-5)', async () => {
    const [b, h, w] = [2, 24, 16];
    const image = testImage(b, h, w);
    const out = await session.run({ image: { data: image, dims: [b, 3, h, w] } });
    expect([...out.latent_mean!.dims]).toEqual([b, 16, h / 8, w / 8]);
    expect([...out.latent_logvar!.dims]).toEqual([b, 16, h / 8, w / 8]);
    const ref = encodeReference({ data: Float64Array.from(image), b, c: 3, h, w }, weights, config);
    expect([ref.mean.b, ref.mean.c, ref.mean.h, ref.mean.w]).toEqual([b, 16, h / 8, w / 8]);
    expect(relativeError(out.latent_mean!.data as Float32Array, ref.mean.data)).toBeLessThanOrEqual(1e-5);
    expect(relativeError(out.latent_logvar!.data as Float32Array, ref.logvar.data)).toBeLessThanOrEqual(1e-5);
    // Each sample is encoded on its own: the second sample alone gives the same latent.
    const alone = await session.run({ image: { data: image.slice(3 * h * w), dims: [1, 3, h, w] } });
    const second = (out.latent_mean!.data as Float32Array).slice(16 * (h / 8) * (w / 8));
    expect(relativeError(alone.latent_mean!.data as Float32Array, second)).toBeLessThanOrEqual(1e-6);
  });

  it('encode → decode round-trips the shape', async () => {
    const b = new GraphBuilder({ name: 'vae_decoder' });
    buildVaeDecoderGraph(b, weights, vaeDecoderConfigFromJson(vaeJson));
    writeFileSync(join(dir, 'vae_decoder.onnx'), b.encode());
    const decoder = await Session.create('vae_decoder', join(dir, 'vae_decoder.onnx'), { threads: 1 });
    try {
      const [h, w] = [32, 48];
      const enc = await session.run({ image: { data: testImage(1, h, w), dims: [1, 3, h, w] } });
      const dec = await decoder.run({ latent: { data: enc.latent_mean!.data, dims: [1, 16, h / 8, w / 8] } });
      expect([...dec.sample!.dims]).toEqual([1, 3, h, w]);
      expect((dec.sample!.data as Float32Array).every(Number.isFinite)).toBe(true);
    } finally {
      await decoder.release();
    }
  });

  it('builds the same encoder from a BFL ae.safetensors', async () => {
    const path = join(dir, 'ae.safetensors');
    writeTensors(path, vaeToBfl(loadDiffusers('vae')), 'F32');
    const bfl = openBflVae(openSafetensors(path));
    try {
      const b = new GraphBuilder({ name: 'vae_encoder' });
      buildVaeEncoderGraph(b, asReader(bfl), config);
      writeFileSync(join(dir, 'bfl_encoder.onnx'), b.encode());
    } finally {
      bfl.close();
    }
    const fromBfl = await Session.create('vae_encoder', join(dir, 'bfl_encoder.onnx'), { threads: 1 });
    try {
      const image = { data: testImage(1, 16, 16), dims: [1, 3, 16, 16] };
      const a = (await fromBfl.run({ image })).latent_mean!.data as Float32Array;
      const b = (await session.run({ image })).latent_mean!.data as Float32Array;
      expect(
        Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength)),
      ).toBe(true);
    } finally {
      await fromBfl.release();
    }
  });

  it('refuses configs it cannot build, naming the field', () => {
    const bad = (patch: Record<string, unknown>) => () => vaeEncoderConfigFromJson({ ...vaeJson, ...patch });
    expect(bad({ down_block_types: ['DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D'] })).toThrow(
      expect.objectContaining({ name: 'VaeConfigError', param: 'down_block_types' }),
    );
    expect(bad({ use_quant_conv: true })).toThrow(expect.objectContaining({ param: 'use_quant_conv' }));
    expect(bad({ in_channels: 0 })).toThrow(VaeConfigError);
  });

  it('refuses missing, mis-shaped or unaccounted weights, naming the tensor', () => {
    const missing = 'encoder.down_blocks.1.downsamplers.0.conv.weight';
    const without: WeightReader = { ...weights, has: (n) => n !== missing && weights.has(n) };
    expect(() => buildVaeEncoderGraph(new GraphBuilder({ name: 'e' }), without, config)).toThrow(
      expect.objectContaining({ name: 'VaeWeightError', tensor: missing }),
    );
    // One resnet more per block than the checkpoint has.
    expect(() =>
      buildVaeEncoderGraph(new GraphBuilder({ name: 'e' }), weights, { ...config, layersPerBlock: 2 }),
    ).toThrow(VaeWeightError);
    // Three down blocks: the checkpoint's fourth is unaccounted for.
    expect(() =>
      buildVaeEncoderGraph(new GraphBuilder({ name: 'e' }), weights, {
        ...config,
        blockOutChannels: [16, 16, 32],
      }),
    ).toThrow(expect.objectContaining({ tensor: 'encoder.down_blocks.3.resnets.0.conv1.weight' }));
  });
});
