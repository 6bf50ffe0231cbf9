/**
 * LoRAs on the CUDA executor, checked without a GPU: the engine layout (flux.cu's Linears, fused q/k/v named by their
 * `+`-joined checkpoint names), the factors per engine layer against the parsed LoRA's own products, and what the
 * executor sends `test/helpers/fake-cuda-engine.mjs` (a process speaking the engine's protocol) for load, switch and
 * unload, with the LoRA layer's typed errors. The engine's arithmetic is checked on the GPU
 * (engines/cuda/scripts/device-lora.sh).
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CudaStepExecutor, createCudaExecutor } from '../../../src/pipeline/cuda-executor.ts';
import { CudaLoraResidency, cudaLoraLayers, cudaLoraLayout, loraErrorOf } from '../../../src/pipeline/cuda-lora.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { LoraError } from '../../../src/pipeline/lora/errors.ts';
import { parseLoraFile } from '../../../src/pipeline/lora/parse.ts';
import type { ParsedLora } from '../../../src/pipeline/lora/types.ts';
import { CudaEngineError, loraLoadFramesOf } from '../../../src/runtime/cuda/index.ts';
import { FAKE_CUDA_ENGINE, fakeRequest, readFakeEngineLog } from '../../helpers/fake-cuda-engine-log.ts';
import { TINY_CONFIG, TINY_SPEC } from '../../helpers/lora.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../../helpers/paths.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const tmp = useTempDir('fluxql-cuda-lora-');
const LORAS = ['lora_0_diffusers', 'lora_1_xlabs', 'lora_2_kohya'];
const layout = cudaLoraLayout(TINY_CONFIG);
const parsed = (n: string): ParsedLora =>
  parseLoraFile(join(FIXTURES_DIR, `${n}.safetensors`), TINY_SPEC, `${n}.safetensors`);

/** Row-major `[m, k] × [k, n]` in float64. */
function matmul(x: Float32Array, y: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) out[i * n + j]! += x[i * k + p]! * y[p * n + j]!;
  return out;
}

describe('CUDA LoRA layout and factors', () => {
  it('names every transformer Linear as flux.cu loads it, each diffusers module exactly once', () => {
    const names = layout.layers.map((l) => l.name);
    const qkv = 'transformer_blocks.0.attn.to_q+transformer_blocks.0.attn.to_k+transformer_blocks.0.attn.to_v';
    const q = layout.layers.find((l) => l.name === qkv)!;
    expect(q).toMatchObject({ inFeatures: 32, outFeatures: 96 });
    expect(q.parts?.map((p) => [p.name, p.offset])).toEqual([
      ['transformer_blocks.0.attn.to_q', 0],
      ['transformer_blocks.0.attn.to_k', 32],
      ['transformer_blocks.0.attn.to_v', 64],
    ]);
    expect(names).toContain(
      'transformer_blocks.1.attn.add_q_proj+transformer_blocks.1.attn.add_k_proj+transformer_blocks.1.attn.add_v_proj',
    );
    expect(names).toContain(
      'single_transformer_blocks.2.attn.to_q+single_transformer_blocks.2.attn.to_k+single_transformer_blocks.2.attn.to_v',
    );
    expect(names).toContain('single_transformer_blocks.2.proj_mlp');
    const modules = layout.layers.flatMap((l) => l.parts?.map((p) => p.name) ?? [l.name]).sort();
    expect(modules).toEqual([...TINY_SPEC.linears.keys()].sort());
    expect(layout.norms).toEqual([]);
  });

  it.each(LORAS)('%s: each engine layer’s B·A is the parts’ scale·B·A in their rows', (name) => {
    const lora = parsed(name);
    const layers = cudaLoraLayers(layout, name, lora);
    expect(layers.length).toBeGreaterThan(0);
    let checked = 0;
    for (const l of layers) {
      const spec = layout.layers.find((x) => x.name === l.layer)!;
      const delta = matmul(l.b, l.a, l.outFeatures, l.rank, l.inFeatures);
      for (const part of spec.parts ?? [{ name: spec.name, offset: 0, outFeatures: spec.outFeatures }]) {
        const f = lora.factors.get(part.name);
        const want = f
          ? matmul(f.b, f.a, f.outFeatures, f.rank, f.inFeatures).map((v) => v * f.scale)
          : new Float64Array(part.outFeatures * l.inFeatures);
        const got = delta.subarray(part.offset * l.inFeatures, (part.offset + part.outFeatures) * l.inFeatures);
        const err = Math.max(...got.map((v, i) => Math.abs(v - want[i]!)));
        expect(err, `${l.layer} / ${part.name}`).toBeLessThan(1e-5);
        checked++;
      }
    }
    // Every factor of the file is in some engine layer.
    expect(checked).toBeGreaterThanOrEqual(lora.factors.size);
  });

  it('refuses an input width a control image cannot fill (neither 64 nor 128) as unsupported', () => {
    const lora = parsed('lora_0_diffusers');
    expect(() => cudaLoraLayers(layout, 'c', { ...lora, inChannels: 96 })).toThrow(
      expect.objectContaining({ code: 'unsupported' }),
    );
    expect(() => cudaLoraLayers(layout, 'c', { ...lora, inChannels: 256 })).toThrow(LoraError);
  });

  it('splits a large LoRA over several lora_load frames, payload in layer order', () => {
    const layers = cudaLoraLayers(layout, 'x', parsed('lora_1_xlabs'));
    const one = loraLoadFramesOf('x', layers);
    expect(one).toHaveLength(1);
    expect(one[0]!.header).toMatchObject({ op: 'lora_load', name: 'x' });
    expect(one[0]!.header).not.toHaveProperty('more');
    const size = (l: (typeof layers)[0]) => 4 * (l.a.length + l.b.length + (l.bias?.length ?? 0));
    const frames = loraLoadFramesOf('x', layers, size(layers[0]!) + 1);
    expect(frames.length).toBeGreaterThan(1);
    expect(frames.map((f) => [f.header.more ?? false, f.header.append ?? false])).toEqual(
      frames.map((_, i) => [i < frames.length - 1, i > 0]),
    );
    expect(frames.flatMap((f) => (f.header.layers as { layer: string }[]).map((l) => l.layer))).toEqual(
      layers.map((l) => l.layer),
    );
    expect(frames.flatMap((f) => f.payload)).toEqual(one[0]!.payload);
    expect(() => loraLoadFramesOf('x', [{ ...layers[0]!, rank: layers[0]!.rank + 1 }])).toThrow(RangeError);
  });

  it('turns a refused engine request into the typed LoraError', () => {
    const e = loraErrorOf(
      new CudaEngineError('lora_load', 'x: factor shapes do not fit the layer', false, {
        code: 'shape_mismatch',
        keys: ['proj_out'],
      }),
      'x.safetensors',
    );
    expect(e).toBeInstanceOf(LoraError);
    expect(e).toMatchObject({ code: 'shape_mismatch', keys: ['proj_out'], lora: 'x.safetensors' });
    const plain = new CudaEngineError('prepare', 'boom', false);
    expect(loraErrorOf(plain)).toBe(plain);
    expect(new CudaLoraResidency(layout).layout).toBe(layout);
  });
});

describe('CUDA executor LoRAs (fake engine process)', () => {
  let exec: CudaStepExecutor;
  let logFile: string;
  let loraDir: string;
  const readLog = () => readFakeEngineLog(logFile);
  const since = (n: number) => readLog().slice(n);
  const req = (seed: number, loras?: SampleRequest['loras']): SampleRequest =>
    fakeRequest(seed, loras ? { loras } : {});
  const start = (env: Record<string, string> = {}) =>
    createCudaExecutor({
      modelDir: MODEL_DIR,
      engineBin: FAKE_CUDA_ENGINE,
      loraDir,
      loraMaxMb: 64,
      env: { ...process.env, FAKE_ENGINE_LOG: logFile, ...env },
    });

  beforeAll(async () => {
    loraDir = tmp();
    for (const n of LORAS) copyFileSync(join(FIXTURES_DIR, `${n}.safetensors`), join(loraDir, `${n}.safetensors`));
    logFile = join(tmp(), 'requests.jsonl');
    exec = await start();
  }, 60_000);
  afterAll(async () => {
    await exec?.close();
  });

  it('announces LoRAs, offers the LoRA port and sends the memory bound with load', async () => {
    expect(exec.info().capabilities).toMatchObject({ lora: true, control: true });
    expect(exec.loraAdmin).toBeDefined();
    expect(readLog().find((l) => l.header.op === 'load')?.header.lora_max_mb).toBe(64);
    const scan = await exec.loraAdmin!.loras();
    expect(scan.loras.map((l) => l.name).sort()).toEqual(LORAS.map((n) => `${n}.safetensors`));
  });

  it('loads a LoRA once, then switches sets per job without reloading; different sets never share a job', async () => {
    const n = readLog().length;
    const a = 'lora_0_diffusers.safetensors';
    const handles = await exec.prepare([req(1, [{ name: 'lora_0_diffusers', strength: 1 }]), req(2, [])]);
    let sent = since(n);
    const loads = sent.filter((l) => l.header.op === 'lora_load');
    expect(loads).toHaveLength(1);
    expect(loads[0]!.header.name).toBe(a);
    // The payload is the factors cuda-lora.ts makes, in layer order.
    const layers = cudaLoraLayers(layout, a, parsed('lora_0_diffusers'));
    expect((loads[0]!.header.layers as { layer: string }[]).map((l) => l.layer)).toEqual(layers.map((l) => l.layer));
    const floats = new Float32Array(loads[0]!.payload.slice().buffer);
    expect(floats.subarray(0, layers[0]!.a.length)).toEqual(layers[0]!.a);
    const prepares = sent.filter((l) => l.header.op === 'prepare');
    expect(prepares.map((p) => p.header.batch)).toEqual([1, 1]);
    expect(prepares.map((p) => p.header.loras ?? null)).toContainEqual([{ name: a, strength: 1 }]);
    expect(prepares.map((p) => p.header.loras ?? null)).toContainEqual(null);
    // The load precedes the prepare that names it.
    const order = sent.map((l) => l.header.op);
    expect(order.indexOf('lora_load')).toBeLessThan(
      sent.findIndex((l) => l.header.op === 'prepare' && Array.isArray(l.header.loras)),
    );

    // Another strength and a second LoRA: only the new one is loaded; same-set requests share one job.
    const m = readLog().length;
    const set = [
      { name: 'lora_0_diffusers', strength: 0.5 },
      { name: 'lora_2_kohya', strength: -1 },
    ];
    const more = await exec.prepare([req(3, set), req(4, set), req(5, [{ name: 'lora_0_diffusers', strength: 0.5 }])]);
    sent = since(m);
    expect(sent.filter((l) => l.header.op === 'lora_load').map((l) => l.header.name)).toEqual([
      'lora_2_kohya.safetensors',
    ]);
    const p2 = sent.filter((l) => l.header.op === 'prepare');
    expect(p2.map((p) => [p.header.batch, p.header.loras]).sort((x, y) => Number(y[0]) - Number(x[0]))).toEqual([
      [
        2,
        [
          { name: a, strength: 0.5 },
          { name: 'lora_2_kohya.safetensors', strength: -1 },
        ],
      ],
      [1, [{ name: a, strength: 0.5 }]],
    ]);
    await exec.release([...handles, ...more]);
  });

  it('applies the default set to requests without loras; unloading frees it on the engine', async () => {
    const admin = exec.loraAdmin!;
    const info = await admin.loadLora('lora_1_xlabs', 0.8);
    expect(info).toMatchObject({ name: 'lora_1_xlabs.safetensors', format: 'xlabs' });
    expect(await admin.activeLoras()).toEqual([{ name: 'lora_1_xlabs.safetensors', strength: 0.8 }]);
    const n = readLog().length;
    const [h] = await exec.prepare([req(6)]);
    expect(since(n).find((l) => l.header.op === 'prepare')?.header.loras).toEqual([
      { name: 'lora_1_xlabs.safetensors', strength: 0.8 },
    ]);
    const m = readLog().length;
    expect(await admin.unloadLora('lora_1_xlabs')).toBe(true);
    expect(await admin.unloadLora('lora_1_xlabs')).toBe(false);
    expect(since(m).map((l) => [l.header.op, l.header.name])).toEqual([['lora_unload', 'lora_1_xlabs.safetensors']]);
    const k = readLog().length;
    const [h2] = await exec.prepare([req(7)]);
    expect(since(k).find((l) => l.header.op === 'prepare')?.header).not.toHaveProperty('loras');
    await exec.release([h!, h2!]);
  });

  it.each([
    ['not_found', [{ name: 'missing', strength: 1 }]],
    ['bad_argument', [{ name: 'lora_0_diffusers', strength: Number.NaN }]],
    [
      'bad_argument',
      [
        { name: 'lora_0_diffusers', strength: 1 },
        { name: 'lora_0_diffusers.safetensors', strength: 2 },
      ],
    ],
  ] as const)('refuses a set (%s) with a typed LoraError before the engine sees it', async (code, set) => {
    const n = readLog().length;
    const err = await exec.prepare([req(8, [...set])]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LoraError);
    expect(err).toMatchObject({ code });
    expect(since(n)).toEqual([]);
    await expect(exec.loraAdmin!.checkLoras([...set])).rejects.toMatchObject({ code });
  });

  it('passes the engine’s refusal on as the typed LoraError; the default set stays as it was', async () => {
    const refusing = await start({ FAKE_ENGINE_LORA_REFUSE: 'shape_mismatch' });
    try {
      const err = await refusing.loraAdmin!.loadLora('lora_2_kohya', 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LoraError);
      expect(err).toMatchObject({ code: 'shape_mismatch', lora: 'lora_2_kohya.safetensors' });
      expect(await refusing.loraAdmin!.activeLoras()).toEqual([]);
      await expect(refusing.prepare([req(9, [{ name: 'lora_2_kohya', strength: 1 }])])).rejects.toMatchObject({
        name: 'LoraError',
        code: 'shape_mismatch',
      });
    } finally {
      await refusing.close();
    }
  });

  it('over the engine’s LoRA memory bound, unloads LoRAs the set does not use and loads again', async () => {
    const small = await start({ FAKE_ENGINE_LORA_MAX: '1' });
    try {
      const n = readLog().length;
      const [h1] = await small.prepare([req(10, [{ name: 'lora_0_diffusers', strength: 1 }])]);
      const [h2] = await small.prepare([req(11, [{ name: 'lora_2_kohya', strength: 1 }])]);
      const ops = since(n)
        .filter((l) => String(l.header.op).startsWith('lora_') || l.header.op === 'error')
        .map((l) => [l.header.op, l.header.name]);
      expect(ops).toEqual([
        ['lora_load', 'lora_0_diffusers.safetensors'],
        ['lora_load', 'lora_2_kohya.safetensors'],
        ['lora_unload', 'lora_0_diffusers.safetensors'],
        ['lora_load', 'lora_2_kohya.safetensors'],
      ]);
      // A set that cannot fit at all stays a typed refusal.
      await expect(
        small.prepare([
          req(12, [
            { name: 'lora_0_diffusers', strength: 1 },
            { name: 'lora_2_kohya', strength: 1 },
          ]),
        ]),
      ).rejects.toMatchObject({ name: 'LoraError', code: 'unsupported' });
      await small.release([h1!, h2!]);
    } finally {
      await small.close();
    }
  });
});
