/**
 * Elastic modes on the CUDA executor (`cuda-modes.ts`) against the fake engine process
 * (test/helpers/fake-cuda-engine.mjs: keeps `load`'s `plans`, refuses a `prepare` naming another plan): `load` asks
 * for the fp8 plan, an `S` request's job names it, modes never share an engine job, and the capabilities list the
 * modes one loaded engine serves.
 */
import { describe, expect, it } from 'vitest';
import type { CudaExecutorOptions, createCudaExecutor } from '../../../src/pipeline/cuda-executor.ts';
import { cudaLoadPlans, cudaModeOf, cudaModeTable } from '../../../src/pipeline/cuda-modes.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { FluxArgumentError } from '../../../src/pipeline/flux/latents.ts';
import { CudaEngineClient, CudaEngineError } from '../../../src/runtime/cuda/index.ts';
import {
  FAKE_CUDA_ENGINE,
  fakeCudaExecutor,
  fakeRequest,
  type readFakeEngineLog,
} from '../../helpers/fake-cuda-engine-log.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const tmp = useTempDir('fluxql-cuda-modes-');

const request = (seed: number, mode?: string): SampleRequest => fakeRequest(seed, mode !== undefined ? { mode } : {});

/** An executor over the fake engine logging every frame it receives; `run` gets it and the log reader. */
async function withExecutor(
  options: Partial<CudaExecutorOptions>,
  run: (
    exec: Awaited<ReturnType<typeof createCudaExecutor>>,
    frames: () => ReturnType<typeof readFakeEngineLog>,
  ) => Promise<void>,
) {
  const { exec, frames } = await fakeCudaExecutor(tmp(), options);
  try {
    await run(exec, frames);
  } finally {
    await exec.close();
  }
}

describe('CUDA modes table', () => {
  it('serves original, XL (the base plan) and S (the fp8 plan) over bf16; no S over f32', () => {
    const bf16 = cudaModeTable('bf16');
    expect(bf16.map((m) => m.mode)).toEqual(['original', 'XL', 'S']);
    expect(cudaModeOf(bf16, undefined).plan).toBeUndefined();
    expect(cudaModeOf(bf16, 'original').plan).toBeUndefined();
    expect(cudaModeOf(bf16, 'XL').plan).toBeUndefined();
    // XL's own step on a bf16 engine: branch outputs in bf16 (prepare's branch_bf16); original keeps fp32 ones.
    expect(cudaModeOf(bf16, 'XL').branchBf16).toBe(true);
    expect(cudaModeOf(bf16, 'original').branchBf16).toBeUndefined();
    expect(cudaModeOf(bf16, 'S').plan).toBe('fp8');
    expect(cudaLoadPlans(bf16)).toEqual({ fp8: 'fp8' });
    const f32 = cudaModeTable('f32');
    expect(f32.map((m) => m.mode)).toEqual(['original', 'XL']);
    expect(cudaModeOf(f32, 'XL').branchBf16).toBeUndefined();
    expect(cudaLoadPlans(f32)).toEqual({});
    expect(() => cudaModeOf(f32, 'S').plan).toThrow(FluxArgumentError);
    expect(() => cudaModeOf(bf16, 'L').plan).toThrow(FluxArgumentError);
  });
});

describe('CUDA executor modes (fake engine process)', () => {
  it('loads with the fp8 plan and lists the modes in its capabilities', async () => {
    await withExecutor({}, async (exec, frames) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'S']);
      const load = frames().find((f) => f.header.op === 'load')!;
      expect(load.header.plans).toEqual({ fp8: 'fp8' });
      expect((await exec.engineInfo()).plans).toEqual([{ name: 'fp8', layers: 1, bytes: 1 }]);
    });
  }, 60_000);

  it('sends no plans and offers no S on an f32 engine', async () => {
    await withExecutor({ precision: 'f32' }, async (exec, frames) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL']);
      expect(frames().find((f) => f.header.op === 'load')!.header).not.toHaveProperty('plans');
    });
  }, 60_000);

  it('prepares an S request with plan fp8 and an original one with the base plan', async () => {
    await withExecutor({}, async (exec, frames) => {
      const [s] = await exec.prepare([request(1, 'S')]);
      const [o] = await exec.prepare([request(2)]);
      const prepares = frames().filter((f) => f.header.op === 'prepare');
      expect(prepares).toHaveLength(2);
      expect(prepares[0]!.header.plan).toBe('fp8');
      expect(prepares[1]!.header).not.toHaveProperty('plan');
      await exec.step([s!]);
      await exec.step([o!]);
      await exec.release([s!, o!]);
    });
  }, 60_000);

  it('never puts samples of different modes in one engine job', async () => {
    await withExecutor({}, async (exec, frames) => {
      const reqs = [request(1), request(2, 'S'), request(3, 'original'), request(4, 'S'), request(5, 'XL')];
      const handles = await exec.prepare(reqs);
      const prepares = frames().filter((f) => f.header.op === 'prepare');
      // original (seeds 1 and 3: an absent mode is original), S (2 and 4), XL (5, its branch outputs in bf16).
      expect(
        prepares.map((f) => [f.header.batch, f.header.plan ?? null, f.header.branch_bf16 ?? false]).sort(),
      ).toEqual(
        [
          [2, null, false],
          [2, 'fp8', false],
          [1, null, true],
        ].sort(),
      );
      // Every job steps as one: stepping all handles once sends one step per job.
      await exec.step(handles);
      expect(frames().filter((f) => f.header.op === 'step')).toHaveLength(3);
      await exec.release(handles);
    });
  }, 60_000);

  it('refuses a mode the engine does not serve before asking it', async () => {
    await withExecutor({}, async (exec, frames) => {
      await expect(exec.prepare([request(1, 'M')])).rejects.toThrow(FluxArgumentError);
      expect(frames().filter((f) => f.header.op === 'prepare')).toHaveLength(0);
    });
  }, 60_000);
});

describe('CUDA engine client plans', () => {
  it('sends plans at load, reads them back, and gets an error frame for an unknown plan', async () => {
    const client = CudaEngineClient.start({ bin: FAKE_CUDA_ENGINE });
    try {
      const loaded = await client.load('/m', 'bf16', { plans: { fp8: 'fp8' } });
      expect(loaded.plans).toEqual([{ name: 'fp8', layers: 1, bytes: 1 }]);
      const args = {
        batch: 1,
        height: 16,
        width: 16,
        clipIds: new Int32Array(77),
        t5Ids: new Int32Array(8),
        t5Len: 8,
        sigmas: [1, 0],
        guidance: [3.5],
      };
      const err = await client.prepare({ ...args, plan: 'fp4' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CudaEngineError);
      expect((err as CudaEngineError).fatal).toBe(false);
      expect((err as Error).message).toMatch(/unknown plan 'fp4'/);
      // The engine keeps serving: the known plan and the base both prepare.
      expect((await client.prepare({ ...args, plan: 'fp8' })).steps).toBe(1);
      expect((await client.prepare(args)).steps).toBe(1);
    } finally {
      await client.quit();
    }
  }, 60_000);
});
