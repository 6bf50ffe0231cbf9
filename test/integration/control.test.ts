/**
 * BFL Control LoRA generation on the embedded model: a constructed control LoRA (`img_in` reading 128 channels) and
 * a control image through the whole pipeline, checked against a reference that encodes the image and feeds the
 * widened engine by hand; plus the errors of a control image without a control LoRA and vice versa.
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { makeBflControlLora } from '../../src/cli/conformance/lora-reference.ts';
import type { SampleRequest } from '../../src/pipeline/executor.ts';
import { concatFeatures, controlPixels } from '../../src/pipeline/flux/control.ts';
import { imageIds, packLatents, textIds } from '../../src/pipeline/flux/latents.ts';
import { TorchCpuGenerator } from '../../src/pipeline/flux/noise.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { eulerStep, fluxSigmas, modelTimestep } from '../../src/pipeline/flux/schedule.ts';
import { maxAbsDiff, relativeError } from '../../src/shared/tensor-metrics.ts';
import { writeSafetensors } from '../../src/shared/weights/index.ts';
import { TINY_CONFIG } from '../helpers/lora.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../helpers/paths.ts';
import { patternPixels as pattern } from '../helpers/pattern-image.ts';

const tmp = mkdtempSync(join(tmpdir(), 'fluxql-control-it-'));
const cacheDir = join(tmp, 'cache');
const loraDir = join(tmp, 'loras');
const CANNY = [{ name: 'canny', strength: 1 }];
const SIZE = 64; // → latent grid 8×8, 16 tokens

const request = (extra: Partial<SampleRequest>): SampleRequest => ({
  prompt: 'a red fox',
  height: SIZE,
  width: SIZE,
  steps: 2,
  guidanceScale: 3.5,
  seed: 7,
  maxSequenceLength: 32,
  ...extra,
});

const bitwiseEqual = (a: Float32Array, b: Float32Array) =>
  a.length === b.length &&
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

let pipe: FluxPipeline;
beforeAll(async () => {
  mkdirSync(loraDir, { recursive: true });
  writeSafetensors(
    join(loraDir, 'canny.safetensors'),
    makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 }),
  );
  copyFileSync(join(FIXTURES_DIR, 'lora_0_diffusers.safetensors'), join(loraDir, 'plain.safetensors'));
  pipe = await FluxPipeline.fromPretrained(MODEL_DIR, {
    compiler: engineCompiler,
    cacheDir,
    loraDir,
    modes: ['original'],
    threads: 1,
  });
});
afterAll(async () => {
  await pipe?.close();
  rmSync(tmp, { recursive: true, force: true });
});

const encoderBuilt = () =>
  existsSync(join(cacheDir, 'components')) &&
  readdirSync(join(cacheDir, 'components')).some((d) => d.startsWith('vae_encoder-'));

async function run(extra: Partial<SampleRequest>): Promise<{ latents: Float32Array; image: Float32Array }> {
  const [s] = await pipe.prepare([request(extra)]);
  while (s!.step < s!.sigmas.length - 1) await pipe.step([s!]);
  const [image] = await pipe.decode([s!]);
  return { latents: s!.latents, image: image! };
}

describe('BFL Control LoRA with a control image', () => {
  it('builds the VAE encoder only for control engines', async () => {
    await run({ loras: [] });
    expect(encoderBuilt()).toBe(false); // text-to-image never compiles it
    await run({ loras: CANNY, controlImage: pattern(SIZE, SIZE, 0) });
    expect(encoderBuilt()).toBe(true);
  });

  it('is deterministic, uses the image, and equals feeding the widened engine by hand', async () => {
    const control = pattern(SIZE, SIZE, 0);
    const a = await run({ loras: CANNY, controlImage: control });
    const sessions = pipe.sessionsCreated;
    const again = await run({ loras: CANNY, controlImage: control });
    expect(pipe.sessionsCreated).toBe(sessions); // engine and encoder sessions are reused
    expect(bitwiseEqual(again.latents, a.latents)).toBe(true);
    expect(bitwiseEqual(again.image, a.image)).toBe(true);

    const otherImage = await run({ loras: CANNY, controlImage: pattern(SIZE, SIZE, 1.5) });
    expect(relativeError(otherImage.latents, a.latents)).toBeGreaterThan(1e-3);
    const plain = await run({ loras: [] });
    expect(relativeError(plain.latents, a.latents)).toBeGreaterThan(1e-2);

    // Reference: encode the control image, sample with the request's generator, scale, pack, then run the two
    // Euler steps feeding concat(latents, control) [1, 16, 128] to the control engine directly.
    const m = (await pipe.manifest()).config;
    const [h, w, c] = [SIZE / 8, SIZE / 8, 16];
    const encoder = await pipe.controlEncoder('original', 64);
    const pixels = await controlPixels(control, SIZE, SIZE);
    const moments = await encoder.run({ image: { data: pixels, dims: [1, 3, SIZE, SIZE] } });
    const mean = moments.latent_mean!.data as Float32Array;
    const logvar = moments.latent_logvar!.data as Float32Array;
    const gen = new TorchCpuGenerator(7);
    const eps = gen.randn(c * h * w);
    const z = mean.map((v, i) => {
      const sample = Math.fround(v + Math.fround(Math.fround(Math.exp(Math.fround(0.5 * logvar[i]!))) * eps[i]!));
      return Math.fround(Math.fround(sample - Math.fround(m.shiftFactor)) * Math.fround(m.scalingFactor));
    });
    const controlLatents = packLatents(z, 1, c, h, w); // [16, 64]
    let latents = packLatents(gen.randn(c * h * w), 1, c, h, w); // the starting noise comes second
    const enc = await pipe.encodePrompts(['a red fox'], ['a red fox'], 32);
    const { sigmas, timesteps } = fluxSigmas(2, 16, pipe.scheduler);
    for (let i = 0; i < 2; i++) {
      const v = await pipe.forwardTransformer(
        {
          hidden: concatFeatures(latents, controlLatents, 16), // [1, 16, 128]
          encoder: enc.embeds[0]!,
          pooled: enc.pooled[0]!,
          timestep: Float32Array.of(modelTimestep(timesteps[i]!)),
          guidance: Float32Array.of(3.5),
          txtIds: textIds(32),
          imgIds: imageIds(h, w),
        },
        'original',
        CANNY,
      );
      latents = eulerStep(latents, v, sigmas[i]!, sigmas[i + 1]!, new Float32Array(latents.length));
    }
    expect(relativeError(a.latents, latents)).toBeLessThanOrEqual(1e-6);
    expect(bitwiseEqual(a.latents, latents)).toBe(true); // the same engine and the same feeds
  });

  it('batches samples with different control images (and seeds) as if each ran alone', async () => {
    const r1 = request({ loras: CANNY, controlImage: pattern(SIZE, SIZE, 0) });
    const r2 = request({ loras: CANNY, controlImage: pattern(SIZE, SIZE, 2), seed: 8 });
    const both = await pipe.prepare([r1, r2]);
    const [alone1] = await pipe.prepare([r1]);
    const [alone2] = await pipe.prepare([r2]);
    for (let i = 0; i < 2; i++) {
      await pipe.step(both); // one transformer run for the pair
      await pipe.step([alone1!]);
      await pipe.step([alone2!]);
    }
    // Within float rounding: ORT's GEMMs block a batch of 2 differently from a batch of 1 (as pipeline.test.ts).
    expect(maxAbsDiff(both[0]!.latents, alone1!.latents)).toBeLessThan(1e-5);
    expect(maxAbsDiff(both[1]!.latents, alone2!.latents)).toBeLessThan(1e-5);
    expect(relativeError(both[0]!.latents, both[1]!.latents)).toBeGreaterThan(1e-2); // each kept its own control
  });

  it('resizes a control image of another size to the output size', async () => {
    const small = pattern(40, 24, 0.5);
    const a = await run({ loras: CANNY, controlImage: small });
    const b = await run({ loras: CANNY, controlImage: small });
    expect(bitwiseEqual(a.latents, b.latents)).toBe(true);
    expect(a.image.length).toBe(3 * SIZE * SIZE);
  });

  it('works through generate(), and the strength matters', async () => {
    const control = pattern(SIZE, SIZE, 0);
    const full = await pipe.generate({ ...request({}), prompt: 'a red fox', loras: CANNY, controlImage: control });
    const half = await pipe.generate({
      ...request({}),
      prompt: 'a red fox',
      loras: [{ name: 'canny', strength: 0.5 }],
      controlImage: control,
    });
    expect(full.images[0]!.width).toBe(SIZE);
    expect(relativeError(half.latents[0]!, full.latents[0]!)).toBeGreaterThan(1e-3);
  });
});

describe('control errors', () => {
  it('a control LoRA without a control image names controlImage', async () => {
    await expect(pipe.prepare([request({ loras: CANNY })])).rejects.toMatchObject({ param: 'controlImage' });
    // The default set counts too.
    pipe.loras.load('canny', 1);
    try {
      await expect(pipe.prepare([request({})])).rejects.toMatchObject({ param: 'controlImage' });
    } finally {
      pipe.loras.unload('canny');
    }
  });

  it('a control image without a control LoRA names controlImage', async () => {
    const controlImage = pattern(SIZE, SIZE, 0);
    await expect(pipe.prepare([request({ loras: [], controlImage })])).rejects.toMatchObject({
      param: 'controlImage',
    });
    await expect(
      pipe.prepare([request({ loras: [{ name: 'plain', strength: 1 }], controlImage })]),
    ).rejects.toMatchObject({ param: 'controlImage' });
  });

  it('a malformed control image names controlImage', async () => {
    const bad = { width: SIZE, height: SIZE, data: new Uint8Array(10) };
    await expect(pipe.prepare([request({ loras: CANNY, controlImage: bad })])).rejects.toMatchObject({
      name: 'ControlImageError',
      param: 'controlImage',
    });
  });
});
