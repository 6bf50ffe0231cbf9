/**
 * BFL Control LoRAs and control images on the CUDA executor, checked without a GPU: the control LoRA's engine factors
 * (x_embedder reading [latents; control latents], up-biases, QK-norm replacements), the `lora_load` / `prepare`
 * frames, and what the executor sends `test/helpers/fake-cuda-engine.mjs` (the engine's protocol in a process): the
 * control image through the engine's `encode` with the request generator's first normals, the starting noise drawn
 * next, the job's control latents with `prepare`; and the ONNX path's typed errors. The engine's arithmetic is
 * checked on the GPU (engines/cuda/scripts/device-lora.sh, the control case of tests/protocol_lora_test.py).
 */
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeBflControlLora } from '../../../src/cli/conformance/lora-reference.ts';
import { type CudaStepExecutor, createCudaExecutor } from '../../../src/pipeline/cuda-executor.ts';
import { cudaLoraLayers, cudaLoraLayout, cudaLoraNorms } from '../../../src/pipeline/cuda-lora.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { ControlImageError, controlPixels } from '../../../src/pipeline/flux/control.ts';
import { packLatents } from '../../../src/pipeline/flux/latents.ts';
import { TorchCpuGenerator } from '../../../src/pipeline/flux/noise.ts';
import { LoraError } from '../../../src/pipeline/lora/errors.ts';
import { parseLoraFile } from '../../../src/pipeline/lora/parse.ts';
import { editPrepareFrameOf, loraLoadFramesOf } from '../../../src/runtime/cuda/index.ts';
import { writeSafetensors } from '../../../src/shared/weights/index.ts';
import { TINY_CONFIG, TINY_SPEC } from '../../helpers/lora.ts';
import { FIXTURES_DIR, MODEL_DIR, REPO_ROOT } from '../../helpers/paths.ts';
import { patternPixels } from '../../helpers/pattern-image.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const FAKE = join(REPO_ROOT, 'test/helpers/fake-cuda-engine.mjs');
const tmp = useTempDir('fluxql-cuda-control-');
const layout = cudaLoraLayout(TINY_CONFIG);
const SIZE = 64; // latent grid 4x4 (16 tokens), 16 channels at 8x8
const N = 16 * (SIZE / 8) * (SIZE / 8);
const HEAD_DIM = 16;

/** Row-major `[m, k] × [k, n]` in float64. */
function matmul(x: Float32Array, y: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) out[i * n + j]! += x[i * k + p]! * y[p * n + j]!;
  return out;
}

let loraDir: string;
const controlFile = () => join(loraDir, 'canny.safetensors');
beforeAll(() => {
  loraDir = tmp();
  writeSafetensors(controlFile(), makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 }));
  // A control LoRA that is neither plain nor control-wide: 96 inputs.
  writeSafetensors(
    join(loraDir, 'odd.safetensors'),
    makeBflControlLora(TINY_CONFIG, { rank: 2, seed: 6, imgInChannels: 96, norms: false }),
  );
  copyFileSync(join(FIXTURES_DIR, 'lora_0_diffusers.safetensors'), join(loraDir, 'plain.safetensors'));
});

describe('CUDA control LoRA factors and frames', () => {
  it('x_embedder reads 128 inputs; every layer’s B·A and bias are the LoRA’s; the norms are its replacements', () => {
    const lora = parseLoraFile(controlFile(), TINY_SPEC, 'canny.safetensors');
    expect(lora.format).toBe('bfl-control');
    expect(lora.inChannels).toBe(128);
    const layers = cudaLoraLayers(layout, 'canny', lora);
    const x = layers.find((l) => l.layer === 'x_embedder')!;
    expect(x).toMatchObject({ inFeatures: 128, outFeatures: 32 });
    const f = lora.factors.get('x_embedder')!;
    const want = matmul(f.b, f.a, f.outFeatures, f.rank, f.inFeatures);
    const got = matmul(x.b, x.a, x.outFeatures, x.rank, x.inFeatures);
    expect(Math.max(...got.map((v, i) => Math.abs(v - want[i]!)))).toBeLessThan(1e-6);
    expect(x.bias).toEqual(f.bias);
    // Every other layer keeps the model's width; BFL Control factors carry up-biases.
    for (const l of layers) {
      if (l.layer !== 'x_embedder')
        expect(l.inFeatures).toBe(layout.layers.find((y) => y.name === l.layer)!.inFeatures);
    }
    expect(layers.filter((l) => l.bias).length).toBeGreaterThan(layers.length / 2);
    const norms = cudaLoraNorms(lora);
    expect(norms.length).toBe(lora.norms.size);
    expect(norms.length).toBeGreaterThan(0);
    for (const n of norms) {
      expect(n.weight).toHaveLength(HEAD_DIM);
      expect(n.norm).toMatch(/^(single_)?transformer_blocks\.\d+\.attn\.norm_(added_)?[qk]$/);
    }
  });

  it('sends the norms in the last lora_load frame, after its layers', () => {
    const lora = parseLoraFile(controlFile(), TINY_SPEC, 'canny.safetensors');
    const layers = cudaLoraLayers(layout, 'canny', lora);
    const norms = cudaLoraNorms(lora);
    const [one] = loraLoadFramesOf('canny', layers, undefined, norms);
    expect(one!.header.norms).toEqual(norms.map((n) => ({ norm: n.norm, dim: HEAD_DIM })));
    expect(one!.payload.slice(-norms.length)).toEqual(norms.map((n) => n.weight));
    const size = 4 * (layers[0]!.a.length + layers[0]!.b.length + (layers[0]!.bias?.length ?? 0));
    const split = loraLoadFramesOf('canny', layers, size + 1, norms);
    expect(split.length).toBeGreaterThan(1);
    expect(split.map((f) => f.header.norms !== undefined)).toEqual(split.map((_, i) => i === split.length - 1));
    expect(split.flatMap((f) => f.payload)).toEqual(one!.payload);
    expect(loraLoadFramesOf('plain', layers)[0]!.header).not.toHaveProperty('norms');
  });

  it('puts the control latents last in prepare and checks their length', () => {
    const base = {
      batch: 1,
      height: SIZE,
      width: SIZE,
      clipIds: new Int32Array(77),
      t5Ids: new Int32Array(8),
      t5Len: 8,
      sigmas: [1, 0],
      guidance: [3.5],
      latents: new Float32Array(N),
    };
    const control = Float32Array.from({ length: N }, (_, i) => i);
    const f = editPrepareFrameOf({ ...base, control });
    expect(f.header).toMatchObject({ op: 'prepare', control: true, latents: 'payload' });
    expect(f.payload.at(-1)).toBe(control);
    expect(editPrepareFrameOf(base).header).not.toHaveProperty('control');
    expect(() => editPrepareFrameOf({ ...base, control: new Float32Array(N - 1) })).toThrow(RangeError);
  });
});

interface Logged {
  header: Record<string, unknown>;
  payload: Uint8Array;
}

describe('CUDA executor control images (fake engine process)', () => {
  let exec: CudaStepExecutor;
  let logFile: string;
  const readLog = (): Logged[] =>
    readFileSync(logFile, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { header: Record<string, unknown>; payload: string })
      .map((l) => ({ header: l.header, payload: new Uint8Array(Buffer.from(l.payload, 'base64')) }));
  const since = (n: number) => readLog().slice(n);
  const floats = (p: Uint8Array) => new Float32Array(p.slice().buffer);
  const req = (seed: number, extra: Partial<SampleRequest> = {}): SampleRequest => ({
    prompt: 'a red fox',
    height: SIZE,
    width: SIZE,
    guidanceScale: 3.5,
    steps: 2,
    seed,
    ...extra,
  });
  const CANNY = [{ name: 'canny', strength: 1 }];

  beforeAll(async () => {
    logFile = join(tmp(), 'requests.jsonl');
    exec = await createCudaExecutor({
      modelDir: MODEL_DIR,
      engineBin: FAKE,
      loraDir,
      env: { ...process.env, FAKE_ENGINE_LOG: logFile },
    });
  }, 60_000);
  afterAll(async () => {
    await exec?.close();
  });

  it('announces control images', () => {
    expect(exec.info().capabilities).toMatchObject({ lora: true, control: true });
  });

  it('loads the control LoRA with its norms, encodes the image with the first normals, then prepares with it', async () => {
    const n = readLog().length;
    const image = patternPixels(SIZE, SIZE, 0);
    const [h] = await exec.prepare([req(7, { loras: CANNY, controlImage: image })]);
    const sent = since(n);
    // The image is encoded first; the set's members are loaded right before the prepare that names them.
    expect(sent.map((l) => l.header.op)).toEqual(['encode', 'lora_load', 'prepare']);
    const [encode, load, prepare] = sent as [Logged, Logged, Logged];
    const layers = load.header.layers as { layer: string; in: number; bias?: boolean }[];
    expect(layers.find((l) => l.layer === 'x_embedder')).toMatchObject({ in: 128, bias: true });
    expect((load.header.norms as unknown[]).length).toBeGreaterThan(0);
    // encode: the control image's pixels, then ε = the first N normals of manual_seed(7).
    expect(encode.header).toMatchObject({ batch: 1, height: SIZE, width: SIZE, noise: 'payload' });
    const gen = new TorchCpuGenerator(7);
    const eps = gen.randn(N);
    const pixels = await controlPixels(image, SIZE, SIZE);
    expect(floats(encode.payload)).toEqual(Float32Array.from([...pixels, ...eps]));
    // prepare: the starting noise is the generator's next N normals; the control latents (the fake's 0.5·ε) last.
    expect(prepare.header).toMatchObject({
      control: true,
      latents: 'payload',
      loras: [{ name: 'canny.safetensors', strength: 1 }],
    });
    const all = floats(prepare.payload);
    const control = all.subarray(all.length - N);
    const latents = all.subarray(all.length - 2 * N, all.length - N);
    expect(control).toEqual(eps.map((v) => Math.fround(0.5 * v)));
    expect(latents).toEqual(packLatents(gen.randn(N), 1, 16, SIZE / 8, SIZE / 8));
    await exec.release([h!]);
  });

  it('batches control samples of one set into one job, each with its own image and seed', async () => {
    const n = readLog().length;
    const set = [...CANNY, { name: 'plain', strength: 0.5 }];
    const hs = await exec.prepare([
      req(1, { loras: set, controlImage: patternPixels(SIZE, SIZE, 0) }),
      req(2, { loras: set, controlImage: patternPixels(40, 24, 1) }),
    ]);
    const sent = since(n);
    expect(sent.filter((l) => l.header.op === 'encode')).toHaveLength(2);
    const prepares = sent.filter((l) => l.header.op === 'prepare');
    expect(prepares).toHaveLength(1);
    expect(prepares[0]!.header).toMatchObject({ batch: 2, control: true });
    const all = floats(prepares[0]!.payload);
    const control = all.subarray(all.length - 2 * N);
    expect(control.subarray(0, N)).not.toEqual(control.subarray(N));
    await exec.release(hs);
  });

  it.each([
    ['missing', { loras: CANNY }],
    ['unexpected', { loras: [], controlImage: patternPixels(SIZE, SIZE, 0) }],
    ['unexpected', { loras: [{ name: 'plain', strength: 1 }], controlImage: patternPixels(SIZE, SIZE, 0) }],
    ['invalid_image', { loras: CANNY, controlImage: { width: SIZE, height: SIZE, data: new Uint8Array(10) } }],
  ] as const)(
    'refuses a control request (%s) with ControlImageError on controlImage, engine untouched',
    async (code, extra) => {
      const n = readLog().length;
      const err = await exec.prepare([req(3, extra as Partial<SampleRequest>)]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ControlImageError);
      expect(err).toMatchObject({ code, param: 'controlImage' });
      expect(since(n).filter((l) => l.header.op !== 'lora_load')).toEqual([]);
    },
  );

  it('refuses a LoRA whose input a control image cannot fill as LoraError unsupported', async () => {
    const err = await exec
      .prepare([req(4, { loras: [{ name: 'odd', strength: 1 }], controlImage: patternPixels(SIZE, SIZE, 0) })])
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LoraError);
    expect(err).toMatchObject({ code: 'unsupported', lora: 'odd.safetensors' });
  });

  it('refuses a control image with an edit (image) as the ONNX path does', async () => {
    const err = await exec
      .prepare([
        req(5, { loras: CANNY, controlImage: patternPixels(SIZE, SIZE, 0), image: patternPixels(SIZE, SIZE, 1) }),
      ])
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ param: 'image' });
  });
});
