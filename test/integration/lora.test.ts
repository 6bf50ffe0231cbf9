/**
 * LoRA end to end on the embedded model: the fixture LoRAs through the pipeline in every mode, hot switching
 * without new ORT sessions, several LoRAs at once against merged weights, LoRA sets in the step path, and the
 * control-capable (widened input) engine at the graph level.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildLoraTransformerGraph } from '../../engines/compiler/flux/lora-transformer.ts';
import { compileTransformer } from '../../engines/compiler/flux/transformer.ts';
import { GraphBuilder } from '../../engines/compiler/onnx/graph-builder.ts';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { makeBflControlLora, mergeBflControl, writeMergedModel } from '../../src/cli/conformance/lora-reference.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { concatIds, ropeTables } from '../../src/pipeline/flux/rope.ts';
import { LoraError } from '../../src/pipeline/lora/errors.ts';
import { buildLoraFeeds } from '../../src/pipeline/lora/feeds.ts';
import { parseLoraFile } from '../../src/pipeline/lora/parse.ts';
import { type HostTensor, Session } from '../../src/runtime/index.ts';
import { relativeError } from '../../src/shared/tensor-metrics.ts';
import { openComponentWeights, writeSafetensors } from '../../src/shared/weights/index.ts';
import { noise, TINY_CONFIG, TINY_SPEC } from '../helpers/lora.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../helpers/paths.ts';
import { readSafetensorsF32 } from '../helpers/read-safetensors.ts';

const tmp = mkdtempSync(join(tmpdir(), 'fluxql-lora-it-'));
const cacheDir = join(tmp, 'cache');
const loraDir = join(tmp, 'loras');
const fx = readSafetensorsF32(join(FIXTURES_DIR, 'transformer_case.safetensors'));
const input = {
  hidden: fx.hidden_states!.data,
  encoder: fx.encoder_hidden_states!.data,
  pooled: fx.pooled_projections!.data,
  timestep: fx.timestep!.data,
  guidance: fx.guidance!.data,
  txtIds: fx.txt_ids!.data,
  imgIds: fx.img_ids!.data,
};
const CASES = [
  ['lora_0_diffusers', 1.0],
  ['lora_1_xlabs', 0.8],
  ['lora_2_kohya', 1.0],
] as const;

const bitwiseEqual = (a: Float32Array, b: Float32Array) =>
  a.length === b.length &&
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

let pipe: FluxPipeline;
beforeAll(async () => {
  mkdirSync(loraDir, { recursive: true });
  for (const [name] of CASES)
    copyFileSync(join(FIXTURES_DIR, `${name}.safetensors`), join(loraDir, `${name}.safetensors`));
  writeSafetensors(join(loraDir, 'ctl1.safetensors'), makeBflControlLora(TINY_CONFIG, { rank: 3, seed: 11 }));
  writeSafetensors(
    join(loraDir, 'ctl2.safetensors'),
    makeBflControlLora(TINY_CONFIG, { rank: 5, seed: 22, norms: false }),
  );
  pipe = await FluxPipeline.fromPretrained(MODEL_DIR, {
    compiler: engineCompiler,
    cacheDir,
    loraDir,
    modes: ['original'],
  });
});
afterAll(async () => {
  await pipe?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe.each(['original', 'XL'])('fixture LoRAs in mode %s', (mode) => {
  it('match the diffusers reference and unloading restores the base output bit for bit', async () => {
    const base = await pipe.forwardTransformer(input, mode);
    expect(relativeError(base, fx.output!.data)).toBeLessThan(1e-4);
    for (const [name, strength] of CASES) {
      const out = await pipe.forwardTransformer(input, mode, [{ name, strength }]);
      const expected = readSafetensorsF32(join(FIXTURES_DIR, `${name}_expected.safetensors`)).output!.data;
      expect(relativeError(out, expected)).toBeLessThan(1e-4);
      expect(relativeError(out, base)).toBeGreaterThan(0.1); // the LoRA really acts
      expect(bitwiseEqual(await pipe.forwardTransformer(input, mode, []), base)).toBe(true);
    }
  });
});

describe('switching LoRAs', () => {
  it('creates no ORT session and reproduces each set exactly', async () => {
    const a = [{ name: 'lora_0_diffusers', strength: 1 }];
    const b = [{ name: 'lora_2_kohya', strength: 0.5 }];
    const first = await pipe.forwardTransformer(input, 'original', a); // loads the LoRA engine once
    const sessions = pipe.sessionsCreated;
    const other = await pipe.forwardTransformer(input, 'original', b);
    const again = await pipe.forwardTransformer(input, 'original', a);
    const base = await pipe.forwardTransformer(input, 'original');
    expect(pipe.sessionsCreated).toBe(sessions);
    expect(bitwiseEqual(again, first)).toBe(true);
    expect(relativeError(other, first)).toBeGreaterThan(0.1);
    expect(relativeError(base, fx.output!.data)).toBeLessThan(1e-4);
  });
});

describe('several LoRAs at once', () => {
  it('equal both LoRAs merged into the weights, in original and XL', async () => {
    const dir1 = join(tmp, 'merged1');
    const dir2 = join(tmp, 'merged2');
    const l1 = makeBflControlLora(TINY_CONFIG, { rank: 3, seed: 11 });
    const l2 = makeBflControlLora(TINY_CONFIG, { rank: 5, seed: 22, norms: false });
    writeMergedModel(MODEL_DIR, dir1, TINY_CONFIG, mergeBflControl(MODEL_DIR, TINY_CONFIG, l1, 0.6));
    writeMergedModel(MODEL_DIR, dir2, TINY_CONFIG, mergeBflControl(dir1, TINY_CONFIG, l2, -0.4));
    const merged = await FluxPipeline.fromPretrained(dir2, { compiler: engineCompiler, cacheDir, modes: [] });
    try {
      const set = [
        { name: 'ctl1', strength: 0.6 },
        { name: 'ctl2', strength: -0.4 },
      ];
      for (const mode of ['original', 'XL']) {
        const reference = await merged.forwardTransformer(input, mode);
        expect(relativeError(await pipe.forwardTransformer(input, mode, set), reference)).toBeLessThan(1e-4);
      }
    } finally {
      await merged.close();
    }
  });
});

describe('LoRA sets in the step path', () => {
  const request = (loras?: { name: string; strength: number }[]) => ({
    prompt: 'a red fox',
    height: 64,
    width: 64,
    steps: 2,
    guidanceScale: 3.5,
    seed: 7,
    maxSequenceLength: 32,
    loras,
  });

  it('steps samples with different sets in one call as if run alone, and applies the default set', async () => {
    const [x, y, z] = await pipe.prepare([request([{ name: 'lora_1_xlabs', strength: 0.8 }]), request([]), request()]);
    const [xs] = await pipe.prepare([request([{ name: 'lora_1_xlabs', strength: 0.8 }])]);
    const [ys] = await pipe.prepare([request([])]);
    for (let i = 0; i < 2; i++) {
      await pipe.step([x!, y!, z!]);
      await pipe.step([xs!, ys!]);
    }
    expect(bitwiseEqual(x!.latents, xs!.latents)).toBe(true);
    expect(bitwiseEqual(y!.latents, ys!.latents)).toBe(true);
    expect(bitwiseEqual(z!.latents, y!.latents)).toBe(true); // no default set: no LoRA
    expect(relativeError(x!.latents, y!.latents)).toBeGreaterThan(1e-3);

    pipe.loras.load('lora_1_xlabs', 0.8);
    try {
      const [d] = await pipe.prepare([request()]);
      expect(d!.request.loras).toEqual([{ name: 'lora_1_xlabs.safetensors', strength: 0.8 }]);
    } finally {
      pipe.loras.unload('lora_1_xlabs');
    }
  });

  it('refuses unknown or escaping LoRA names when preparing', async () => {
    await expect(pipe.prepare([request([{ name: 'nope', strength: 1 }])])).rejects.toBeInstanceOf(LoraError);
    await expect(pipe.prepare([request([{ name: '../cache', strength: 1 }])])).rejects.toMatchObject({
      code: 'forbidden_path',
    });
  });
});

describe('control-capable engine (x_embedder widened to 128 inputs)', () => {
  it('computes the base model with no LoRA and the merged widened model with a control LoRA', async () => {
    const w = openComponentWeights(join(MODEL_DIR, 'transformer'));
    const b = new GraphBuilder({ name: 'flux_transformer' });
    const desc = buildLoraTransformerGraph(b, w, TINY_CONFIG, { controlChannels: 64 });
    const baseNorms = new Map([...TINY_SPEC.norms.keys()].map((m) => [m, w.readF32(`${m}.weight`)]));
    w.close();
    expect(desc.lora.inChannels).toBe(128);
    const enginePath = join(tmp, 'control.onnx');
    writeFileSync(enginePath, b.encode());
    const session = await Session.create('transformer', enginePath);

    // A real control LoRA's img_in reads [noisy latents; control latents]: [1, 16, 128].
    const control = noise(16 * 64, 99);
    const hidden = new Float32Array(16 * 128);
    for (let l = 0; l < 16; l++) {
      hidden.set(input.hidden.subarray(l * 64, (l + 1) * 64), l * 128);
      hidden.set(control.subarray(l * 64, (l + 1) * 64), l * 128 + 64);
    }
    const rope = ropeTables(concatIds(input.txtIds, input.imgIds), TINY_CONFIG.axes_dims_rope!);
    const feeds = (extra: Record<string, HostTensor>): Record<string, HostTensor> => ({
      hidden_states: { data: hidden, dims: [1, 16, 128] },
      encoder_hidden_states: { data: input.encoder, dims: [1, 24, 32] },
      pooled_projections: { data: input.pooled, dims: [1, 32] },
      timestep: { data: input.timestep, dims: [1] },
      guidance: { data: input.guidance, dims: [1] },
      rope_cos: { data: rope.cos, dims: [rope.seqLen, rope.dim] },
      rope_sin: { data: rope.sin, dims: [rope.seqLen, rope.dim] },
      ...extra,
    });
    const none = await session.run(feeds(buildLoraFeeds(desc.lora, [], baseNorms)));
    expect(relativeError(none.sample!.data as Float32Array, fx.output!.data)).toBeLessThan(1e-4);

    const tensors = makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 });
    writeSafetensors(join(loraDir, 'wide.safetensors'), tensors);
    const lora = parseLoraFile(join(loraDir, 'wide.safetensors'), TINY_SPEC);
    const withLora = await session.run(
      feeds(buildLoraFeeds(desc.lora, [{ name: 'wide', lora, strength: 0.9 }], baseNorms)),
    );
    await session.release();
    // On a 64-channel LoRA engine the same LoRA is refused.
    await expect(pipe.forwardTransformer(input, 'original', [{ name: 'wide', strength: 1 }])).rejects.toMatchObject({
      code: 'unsupported',
    });

    const mergedDir = join(tmp, 'merged-wide');
    writeMergedModel(MODEL_DIR, mergedDir, TINY_CONFIG, mergeBflControl(MODEL_DIR, TINY_CONFIG, tensors, 0.9));
    const mw = openComponentWeights(join(mergedDir, 'transformer'));
    const ref = compileTransformer(mw, { ...TINY_CONFIG, in_channels: 128, out_channels: 64 }, tmp, {
      fileName: 'merged.onnx',
    });
    mw.close();
    const refSession = await Session.create('transformer', ref.modelPath);
    const expected = await refSession.run(feeds({}));
    await refSession.release();
    expect(relativeError(withLora.sample!.data as Float32Array, expected.sample!.data as Float32Array)).toBeLessThan(
      1e-4,
    );
    expect(relativeError(withLora.sample!.data as Float32Array, none.sample!.data as Float32Array)).toBeGreaterThan(
      0.01,
    );
  });
});
