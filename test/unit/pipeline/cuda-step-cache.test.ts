/**
 * Step caching on the CUDA executor (its `stepCache` option) against the fake engine process
 * (test/helpers/fake-cuda-engine.mjs: the engine's caching rule with a fixed first-block change of 0.5): what `prepare`
 * sends, and the counters the engine reports per job summed into `stats().stepCache`.
 */
import { describe, expect, it } from 'vitest';
import { type CudaExecutorOptions, createCudaExecutor } from '../../../src/pipeline/cuda-executor.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { FAKE_CUDA_ENGINE, fakeCudaExecutor } from '../../helpers/fake-cuda-engine-log.ts';
import { MODEL_DIR } from '../../helpers/paths.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const tmp = useTempDir('fluxql-cuda-step-cache-');

const request = (seed: number, steps: number): SampleRequest => ({
  prompt: 'a red fox',
  height: 64,
  width: 64,
  guidanceScale: 3.5,
  steps,
  seed,
});

/** Runs two samples (one engine job) for `steps` steps; returns the stats and the logged frames. */
async function run(stepCache: CudaExecutorOptions['stepCache'], steps: number) {
  const { exec, frames } = await fakeCudaExecutor(tmp(), stepCache ? { stepCache } : {});
  try {
    const handles = await exec.prepare([request(1, steps), request(2, steps)]);
    for (let i = 0; i < steps; i++) await exec.step(handles);
    await exec.release(handles);
    return { stats: await exec.stats(), frames: frames() };
  } finally {
    await exec.close();
  }
}

describe('CUDA executor step caching (fake engine process)', () => {
  it('sends no step_cache and reports no counters without the option', async () => {
    const { stats, frames } = await run(undefined, 3);
    const prepares = frames.filter((f) => f.header.op === 'prepare');
    expect(prepares).toHaveLength(1);
    expect(prepares[0]!.header).not.toHaveProperty('step_cache');
    expect(stats.stepCache).toBeUndefined();
  }, 60_000);

  it('sends the threshold and counts full and cached job steps (one job for the batch)', async () => {
    // Threshold above the change: warm-up step 0 full, then cached and full alternate (max 1 cached in a row).
    const { stats, frames } = await run({ threshold: 0.8 }, 5);
    const prepares = frames.filter((f) => f.header.op === 'prepare');
    expect(prepares).toHaveLength(1);
    expect(prepares[0]!.header.step_cache).toEqual({ threshold: 0.8 });
    expect(stats.stepCache).toEqual({ threshold: 0.8, full: 3, cached: 2 });
  }, 60_000);

  it('passes warm-up and consecutive limits through', async () => {
    const { stats, frames } = await run({ threshold: 0.8, warmupSteps: 2, maxConsecutive: 3 }, 6);
    const prepare = frames.find((f) => f.header.op === 'prepare')!;
    expect(prepare.header.step_cache).toEqual({ threshold: 0.8, warmup_steps: 2, max_consecutive: 3 });
    // Steps 0-1 full (warm-up), 2-4 cached, 5 full (three cached in a row).
    expect(stats.stepCache).toEqual({ threshold: 0.8, full: 3, cached: 3 });
  }, 60_000);

  it('runs every step in full under a threshold the change never meets', async () => {
    const { stats } = await run({ threshold: 0.1 }, 4);
    expect(stats.stepCache).toEqual({ threshold: 0.1, full: 4, cached: 0 });
  }, 60_000);

  it('refuses a negative or non-finite threshold', async () => {
    for (const threshold of [-0.1, Number.NaN, Number.POSITIVE_INFINITY]) {
      await expect(
        createCudaExecutor({ modelDir: MODEL_DIR, engineBin: FAKE_CUDA_ENGINE, stepCache: { threshold } }),
      ).rejects.toThrow(RangeError);
    }
  });
});
