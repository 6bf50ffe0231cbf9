/**
 * @file The VAE decoder graph against the diffusers reference: compile flux-tiny's VAE to ONNX (with external data,
 * as production does), decode the final latents of each pipeline fixture and compare with the fixture's image.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildVaeDecoderGraph,
  FLUX_VAE_DECODER_CONFIG,
  type GraphDescriptor,
  VaeConfigError,
  type VaeDecoderConfig,
  VaeWeightError,
  vaeDecoderConfigFromJson,
  vaeScaleFactor,
} from '../../../../engines/compiler/flux/vae.ts';
import { ExternalDataWriter } from '../../../../engines/compiler/onnx/external-data.ts';
import { GraphBuilder } from '../../../../engines/compiler/onnx/graph-builder.ts';
import type { WeightReader } from '../../../../engines/compiler/onnx/nn.ts';
import { unpackLatents } from '../../../../src/pipeline/flux/latents.ts';
import { Session } from '../../../../src/runtime/index.ts';
import { maxAbsDiff, relativeError } from '../../../../src/shared/tensor-metrics.ts';
import { openComponentWeights, type WeightSource } from '../../../../src/shared/weights/weight-source.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../../../helpers/paths.ts';
import { readSafetensorsF32 } from '../../../helpers/read-safetensors.ts';

const VAE_DIR = join(MODEL_DIR, 'vae');

interface PipelineCase {
  file: string;
  prompts: string[];
  height: number;
  width: number;
  steps: number;
}

const index = JSON.parse(readFileSync(join(FIXTURES_DIR, 'index.json'), 'utf8')) as { pipeline_cases: PipelineCase[] };
const vaeJson = JSON.parse(readFileSync(join(VAE_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;

/** docs/FLUX_SPEC.md §3.4, done here so the test does not depend on the pipeline's own scaling code. */
function latentForDecode(packed: Float32Array, batch: number, h: number, w: number): Float32Array {
  const z = unpackLatents(packed, batch, 16, h, w); // [B, 16, h, w]
  const scaling = vaeJson.scaling_factor as number;
  const shift = vaeJson.shift_factor as number;
  return z.map((v) => v / scaling + shift);
}

/** diffusers' VaeImageProcessor before quantisation: `clamp(x/2 + 0.5, 0, 1)`. */
function postprocess(x: Float32Array): Float32Array {
  return x.map((v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
}

/** A reader that pretends one tensor is absent, or reports a wrong shape for it. */
function tamperedReader(base: WeightReader, name: string, shape?: number[]): WeightReader {
  return {
    has: (n) => (n === name ? shape !== undefined : base.has(n)),
    info: (n) => {
      if (n !== name) return base.info(n);
      if (!shape) throw new Error(`no tensor named '${n}'`);
      return { shape };
    },
    readF32: (n) => base.readF32(n),
  };
}

/**
 * `WeightSource.info` returns a `readonly` shape while nn.ts's `WeightReader` declares a mutable one; copy the
 * shape until the two interfaces agree.
 */
function asReader(source: WeightSource): WeightReader {
  return {
    has: (n) => source.has(n),
    info: (n) => ({ shape: [...source.info(n).shape] }),
    readF32: (n) => source.readF32(n),
  };
}

function buildInto(w: WeightReader, config: VaeDecoderConfig): GraphDescriptor {
  return buildVaeDecoderGraph(new GraphBuilder({ name: 'vae_decoder' }), w, config);
}

describe('VAE decoder graph (flux-tiny vs diffusers)', () => {
  let dir: string;
  let source: WeightSource;
  let weights: WeightReader;
  let session: Session;
  let descriptor: GraphDescriptor;
  let externalBytes = 0;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fluxql-vae-'));
    source = openComponentWeights(VAE_DIR);
    weights = asReader(source);
    const ext = new ExternalDataWriter(join(dir, 'vae_decoder.onnx.data'));
    const b = new GraphBuilder({ name: 'vae_decoder', externalData: ext });
    descriptor = buildVaeDecoderGraph(b, weights, vaeDecoderConfigFromJson(vaeJson));
    writeFileSync(join(dir, 'vae_decoder.onnx'), b.encode());
    externalBytes = ext.size;
    ext.close();
    session = await Session.create('vae_decoder', join(dir, 'vae_decoder.onnx'), { threads: 1 });
  });

  afterAll(() => {
    source?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function decode(latent: Float32Array, batch: number, h: number, w: number) {
    const out = await session.run({ latent: { data: latent, dims: [batch, 16, h, w] } });
    const sample = out.sample;
    if (!sample) throw new Error('no sample output');
    return { data: sample.data as Float32Array, dims: [...sample.dims] };
  }

  it('describes its input and output, and stores large weights externally', () => {
    expect(descriptor).toEqual({
      inputs: [{ name: 'latent', dtype: 'float32', dims: ['batch', 16, 'latent_height', 'latent_width'] }],
      outputs: [{ name: 'sample', dtype: 'float32', dims: ['batch', 3, 'image_height', 'image_width'] }],
    });
    expect(session.inputNames).toEqual(['latent']);
    expect(session.outputNames).toEqual(['sample']);
    expect(externalBytes).toBeGreaterThan(100_000); // the conv weights, not inlined in the protobuf
  });

  it('computes the mid-block attention in query blocks with the same result, empty blocks included', async () => {
    // 16 blocks over 96 tokens (6 each) and 200 blocks over 96 tokens (most of them empty).
    const latent = Float32Array.from({ length: 2 * 16 * 8 * 12 }, (_, i) => Math.sin(i * 0.37));
    const reference = await decode(latent, 2, 8, 12);
    for (const chunks of [16, 200]) {
      const file = join(dir, `vae_chunked_${chunks}.onnx`);
      const b = new GraphBuilder({ name: 'vae_decoder' });
      buildVaeDecoderGraph(b, weights, vaeDecoderConfigFromJson(vaeJson), { attentionQueryChunks: chunks });
      writeFileSync(file, b.encode());
      const chunked = await Session.create('vae_decoder', file, { threads: 1 });
      const out = await chunked.run({ latent: { data: latent, dims: [2, 16, 8, 12] } });
      await chunked.release();
      expect(out.sample!.dims).toEqual(reference.dims);
      expect(maxAbsDiff(out.sample!.data as Float32Array, reference.data)).toBeLessThan(1e-5);
    }
  });

  for (const [ci, c] of index.pipeline_cases.entries()) {
    it(`case ${ci} (${c.prompts.length}× ${c.height}×${c.width}): matches the diffusers image`, async () => {
      const fx = readSafetensorsF32(join(FIXTURES_DIR, c.file));
      const packed = fx[`latents_after_step_${c.steps - 1}`]!;
      const image = fx.image!;
      const batch = c.prompts.length;
      const h = c.height / 8;
      const w = c.width / 8;
      expect(packed.shape).toEqual([batch, (h / 2) * (w / 2), 64]);

      const out = await decode(latentForDecode(packed.data, batch, h, w), batch, h, w);
      // Non-square sizes come out as H×W, not W×H (case 1 is 96×128).
      expect(out.dims).toEqual([batch, 3, c.height, c.width]);
      expect(out.dims).toEqual(image.shape);

      const pixels = postprocess(out.data);
      const maxDiff = maxAbsDiff(pixels, image.data);
      const rel = relativeError(pixels, image.data);
      console.log(`vae case ${ci}: max |Δ| = ${maxDiff.toExponential(3)}, rel = ${rel.toExponential(3)}`);
      expect(maxDiff).toBeLessThanOrEqual(2 / 255);
      expect(rel).toBeLessThan(1e-4);
    });
  }

  it('decodes a batch exactly as the samples one by one', async () => {
    const c = index.pipeline_cases.find((pc) => pc.prompts.length > 1)!;
    const fx = readSafetensorsF32(join(FIXTURES_DIR, c.file));
    const batch = c.prompts.length;
    const h = c.height / 8;
    const w = c.width / 8;
    const latent = latentForDecode(fx[`latents_after_step_${c.steps - 1}`]!.data, batch, h, w);
    const together = await decode(latent, batch, h, w);
    const per = together.data.length / batch;
    const plane = 16 * h * w;
    for (let i = 0; i < batch; i++) {
      const alone = await decode(latent.slice(i * plane, (i + 1) * plane), 1, h, w);
      expect(alone.dims).toEqual([1, 3, c.height, c.width]);
      // The samples differ, so equality per sample shows nothing leaks across the batch (GroupNorm, attention).
      expect(maxAbsDiff(alone.data, together.data.subarray(i * per, (i + 1) * per))).toBeLessThan(1e-5);
    }
    expect(maxAbsDiff(together.data.subarray(0, per), together.data.subarray(per, 2 * per))).toBeGreaterThan(0.01);
  });

  it('names a missing tensor', () => {
    const name = 'decoder.up_blocks.1.resnets.0.norm2.weight';
    const run = () => buildInto(tamperedReader(weights, name), vaeDecoderConfigFromJson(vaeJson));
    expect(run).toThrow(VaeWeightError);
    expect(run).toThrow(name);
    try {
      run();
    } catch (err) {
      expect((err as VaeWeightError).tensor).toBe(name);
    }
  });

  it('names a tensor whose shape disagrees with the config', () => {
    const name = 'decoder.mid_block.attentions.0.to_k.weight';
    const run = () => buildInto(tamperedReader(weights, name, [32, 16]), vaeDecoderConfigFromJson(vaeJson));
    expect(run).toThrow(VaeWeightError);
    expect(run).toThrow(/to_k\.weight: expected shape \[32,32\], got \[32,16\]/);
  });

  it('refuses a config that describes fewer layers than the checkpoint holds', () => {
    const config = vaeDecoderConfigFromJson(vaeJson);
    const fewerBlocks = { ...config, blockOutChannels: [16, 32, 32] };
    expect(() => buildInto(weights, fewerBlocks)).toThrow(/up_blocks\.3\.resnets\.0\.conv1\.weight: present/);
    // A layers_per_block too small by one would silently drop the last resnet of every block.
    const extraResnet = tamperedReader(weights, 'decoder.up_blocks.0.resnets.2.conv1.weight', [32, 32, 3, 3]);
    expect(() => buildInto(extraResnet, config)).toThrow(/resnets\.2\.conv1\.weight: present, but layers_per_block 1/);
  });
});

describe('vaeDecoderConfigFromJson', () => {
  it('reads the flux-tiny config', () => {
    expect(vaeDecoderConfigFromJson(vaeJson)).toEqual({
      latentChannels: 16,
      outChannels: 3,
      blockOutChannels: [16, 16, 32, 32],
      layersPerBlock: 1,
      normNumGroups: 8,
      midBlockAddAttention: true,
    });
    expect(vaeScaleFactor(FLUX_VAE_DECODER_CONFIG)).toBe(8);
  });

  it('names the field it cannot use', () => {
    const bad = (patch: Record<string, unknown>) => () => vaeDecoderConfigFromJson({ ...vaeJson, ...patch });
    expect(bad({ act_fn: 'relu' })).toThrow(VaeConfigError);
    expect(bad({ act_fn: 'relu' })).toThrow(/act_fn/);
    expect(bad({ layers_per_block: 0 })).toThrow(/layers_per_block/);
    expect(bad({ block_out_channels: [] })).toThrow(/block_out_channels/);
    expect(bad({ use_post_quant_conv: true })).toThrow(/use_post_quant_conv/);
    expect(bad({ up_block_types: ['UpDecoderBlock2D'] })).toThrow(/up_block_types/);
  });

  it('rejects channel counts that GroupNorm cannot split', () => {
    const config = { ...vaeDecoderConfigFromJson(vaeJson), normNumGroups: 6 };
    expect(() =>
      buildInto({ has: () => false, info: () => ({ shape: [] }), readF32: () => new Float32Array() }, config),
    ).toThrow(/norm_num_groups 6/);
  });
});
