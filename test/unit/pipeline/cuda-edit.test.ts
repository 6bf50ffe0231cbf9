import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CudaStepExecutor, createCudaExecutor } from '../../../src/pipeline/cuda-executor.ts';
import type { RgbImage, SampleRequest } from '../../../src/pipeline/executor.ts';
import { maskLatents, scaleNoise } from '../../../src/pipeline/flux/edit.ts';
import { latentGrid, packLatents } from '../../../src/pipeline/flux/latents.ts';
import { noiseForSeeds, TorchCpuGenerator } from '../../../src/pipeline/flux/noise.ts';
import { fluxSigmas, parseSchedulerConfig } from '../../../src/pipeline/flux/schedule.ts';
import { loadFluxTokenizers } from '../../../src/pipeline/flux/tokenize.ts';
import { resolveModelRepo } from '../../../src/shared/weights/index.ts';
import { FAKE_CUDA_ENGINE, readFakeEngineLog } from '../../helpers/fake-cuda-engine-log.ts';
import { MODEL_DIR } from '../../helpers/paths.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const tmp = useTempDir('fluxql-cuda-edit-');

let exec: CudaStepExecutor;
let logFile: string;
const readLog = () => readFakeEngineLog(logFile);
const f32 = (b: Uint8Array, from = 0, count = (b.byteLength - from) / 4) =>
  new Float32Array(b.slice(from, from + 4 * count).buffer);
const i32 = (b: Uint8Array, from: number, count: number) => new Int32Array(b.slice(from, from + 4 * count).buffer);

/** A w×h RGB image: left half black, right half white (as a mask: repaint the right half). */
function halves(w: number, h: number): RgbImage {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = w / 2; x < w; x++) data.fill(255, (y * w + x) * 3, (y * w + x) * 3 + 3);
  return { width: w, height: h, data };
}
function gradient(w: number, h: number): RgbImage {
  return { width: w, height: h, data: Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * 7) % 256) };
}

const base = { prompt: 'a red fox', height: 64, width: 64, guidanceScale: 3.5 };
const img2img: SampleRequest = { ...base, steps: 4, seed: 7, image: gradient(48, 40), strength: 0.5 };
const inpaint: SampleRequest = {
  ...base,
  steps: 3,
  seed: 9,
  image: gradient(64, 64),
  mask: halves(64, 64),
  strength: 1,
};
const trueCfg: SampleRequest = { ...base, steps: 3, seed: 11, negativePrompt: 'blurry', trueCfgScale: 3 };
const plain: SampleRequest = { ...base, steps: 3, seed: 5 };

beforeAll(async () => {
  logFile = join(tmp(), 'requests.jsonl');
  exec = await createCudaExecutor({
    modelDir: MODEL_DIR,
    engineBin: FAKE_CUDA_ENGINE,
    env: { ...process.env, FAKE_ENGINE_LOG: logFile },
  });
}, 60_000);
afterAll(async () => {
  await exec?.close();
});

describe('CUDA executor edits (fake engine process)', () => {
  it('announces edits in its capabilities', () => {
    expect(exec.info().capabilities.edit).toBe(true);
  });

  it('sends what edit.ts computes: encoder normals, start latents, cut schedules, mask, negative prompts', async () => {
    const before = readLog().length;
    const handles = await exec.prepare([img2img, inpaint, trueCfg, plain]);
    expect(new Set(handles).size).toBe(4);
    const sent = readLog().slice(before);
    const grid = latentGrid(64, 64);
    const n = 16 * grid.h * grid.w;
    const repo = resolveModelRepo(MODEL_DIR);
    const scheduler = parseSchedulerConfig(repo.schedulerConfig);
    const tok = await loadFluxTokenizers({ clip: repo.tokenizerDir, t5: repo.tokenizer2Dir });
    const t5Len = tok.defaultT5Length;

    // Each image request: one encode of [1, 3, 64, 64] pixels with its generator's first n normals.
    const encodes = sent.filter((l) => l.header.op === 'encode');
    expect(encodes).toHaveLength(2);
    const draws = (seed: number) => {
      const g = new TorchCpuGenerator(seed);
      return { eps: g.randn(n), noise: packLatents(g.randn(n), 1, 16, grid.h, grid.w) };
    };
    // (The two jobs prepare concurrently: the encodes may come in either order.)
    for (const seed of [7, 9]) {
      const eps = draws(seed).eps;
      const e = encodes.find((x) => f32(x.payload, 4 * 3 * 64 * 64).every((v, i) => v === eps[i]));
      expect(e?.header).toMatchObject({ batch: 1, height: 64, width: 64, noise: 'payload', output: 'latents' });
    }

    const prepares = sent.filter((l) => l.header.op === 'prepare');
    expect(prepares).toHaveLength(4);
    const by = (pred: (h: Record<string, unknown>) => boolean) => prepares.find((p) => pred(p.header))!;
    const ids = 4 * (77 + t5Len);
    const lat = grid.seqLen * 64;

    // img2img: strength 0.5 of 4 steps runs the last 2; start = σ₀·noise + (1 − σ₀)·x0 with x0 = the encoder's answer.
    const a = by((h) => (h.sigmas as number[]).length === 3);
    const full4 = fluxSigmas(4, grid.seqLen, scheduler).sigmas;
    expect(a.header.sigmas).toEqual(Array.from(full4.slice(2)));
    expect(a.header).not.toHaveProperty('inpaint');
    expect(a.header).not.toHaveProperty('true_cfg');
    const da = draws(7);
    const x0a = da.eps.map((v) => Math.fround(0.5 * v));
    expect(f32(a.payload, ids)).toEqual(scaleNoise(x0a, da.noise, full4[2]!));

    // Inpainting: start latents, then x0, noise and the packed mask, all [1, L, 64].
    const b = by((h) => h.inpaint === true);
    expect(b.header.latents).toBe('payload');
    expect(b.payload.byteLength).toBe(ids + 4 * 4 * lat);
    const db = draws(9);
    const x0b = db.eps.map((v) => Math.fround(0.5 * v));
    const sig3 = fluxSigmas(3, grid.seqLen, scheduler).sigmas;
    expect(b.header.sigmas).toEqual(Array.from(sig3));
    expect(f32(b.payload, ids, lat)).toEqual(scaleNoise(x0b, db.noise, sig3[0]!));
    expect(f32(b.payload, ids + 4 * lat, lat)).toEqual(x0b);
    expect(f32(b.payload, ids + 8 * lat, lat)).toEqual(db.noise);
    const mask = f32(b.payload, ids + 12 * lat, lat);
    expect(mask).toEqual(await maskLatents(inpaint.mask!, 64, 64, grid, 16));
    expect(new Set(mask)).toEqual(new Set([0, 1]));

    // True CFG: 2 rows of ids (prompt, then negative prompt), one scale, the seed's noise.
    const c = by((h) => Array.isArray(h.true_cfg));
    expect(c.header.true_cfg).toEqual([3]);
    expect(c.header.batch).toBe(1);
    expect(Array.from(i32(c.payload, 0, 2 * 77))).toEqual(Array.from(tok.encodeClip(['a red fox', 'blurry']), Number));
    expect(Array.from(i32(c.payload, 4 * 2 * 77, 2 * t5Len))).toEqual(
      Array.from(tok.encodeT5(['a red fox', 'blurry'], t5Len), Number),
    );
    expect(f32(c.payload, 2 * ids, lat)).toEqual(
      packLatents(noiseForSeeds([11], 16, grid.h, grid.w), 1, 16, grid.h, grid.w),
    );

    // The plain request is its own job (not batched with true CFG) and sends no edit fields.
    const d = by((h) => !h.true_cfg && !h.inpaint && (h.sigmas as number[]).length === 4);
    expect(d.payload.byteLength).toBe(ids + 4 * lat);

    // Steps and decode run as for text-to-image: img2img's job has 2 steps, the others 3.
    let results = await exec.step(handles);
    expect(results.map((r) => r.totalSteps)).toEqual([2, 3, 3, 3]);
    for (let i = 0; i < 2; i++) results = await exec.step(handles);
    expect(results.map((r) => r.step)).toEqual([2, 3, 3, 3]);
    const images = await exec.decode(handles);
    expect(images.map((im) => [im.width, im.height])).toEqual(Array(4).fill([64, 64]));
    await exec.release(handles);
  });

  it.each([
    ['strength', { ...img2img, strength: 1.5 }],
    ['strength', { ...img2img, strength: 0 }],
    ['mask', { ...inpaint, mask: halves(32, 64) }],
    ['mask', { ...plain, mask: halves(64, 64) }],
    ['image', { ...img2img, image: { width: 4, height: 4, data: new Uint8Array(5) } }],
    ['trueCfgScale', { ...trueCfg, trueCfgScale: -1 }],
  ] as const)('refuses a bad %s with a typed error before the engine sees it', async (param, r) => {
    const before = readLog().length;
    await expect(exec.prepare([r as SampleRequest])).rejects.toMatchObject({ param });
    expect(readLog().length).toBe(before);
  });
});
