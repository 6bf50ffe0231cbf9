/**
 * Joining a running engine batch (issue 16) on the CUDA executor, against the fake engine process
 * (test/helpers/fake-cuda-engine.mjs: per-sample steps, `join`, subset `latents` / `decode` / `release`): a compatible
 * request prepared while a job runs is sent with `join` into that job, steps advance each sample on its own schedule,
 * and decode / release name single samples.
 */
import { describe, expect, it } from 'vitest';
import type { CudaExecutorOptions } from '../../../src/pipeline/cuda-executor.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { fakeCudaExecutor } from '../../helpers/fake-cuda-engine-log.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const tmp = useTempDir('fluxql-cuda-join-');

const request = (seed: number, steps: number, side = 64): SampleRequest => ({
  prompt: 'a red fox',
  height: side,
  width: side,
  guidanceScale: 3.5,
  steps,
  seed,
});

async function executor(options: Partial<CudaExecutorOptions> = {}) {
  const { exec, frames } = await fakeCudaExecutor(tmp(), options);
  return { exec, ops: () => frames().map((f) => f.header) };
}

describe('CUDA executor: joiners land in the running engine batch (fake engine process)', () => {
  it('sends join for a compatible request while a job runs, and steps, decodes and releases per sample', async () => {
    const { exec, ops } = await executor();
    try {
      const [a] = await exec.prepare([request(1, 4)]);
      expect((await exec.step([a!]))[0]).toMatchObject({ step: 1, totalSteps: 4 });
      // Another step count: the joiner brings its own schedule.
      const [b] = await exec.prepare([request(2, 5)]);
      const sent = ops();
      expect(sent.filter((h) => h.op === 'prepare')).toHaveLength(1);
      const joins = sent.filter((h) => h.op === 'join');
      expect(joins).toHaveLength(1);
      expect(joins[0]).toMatchObject({ job: 1, batch: 1, height: 64, width: 64 });
      expect(joins[0]!.sigmas).toHaveLength(6);
      expect((await exec.engineInfo()).jobs).toBe(1);
      // A sample of the batch with steps left must be stepped with the others.
      await expect(exec.step([b!])).rejects.toThrow(/step together/);
      let r = await exec.step([a!, b!]);
      for (let i = 0; i < 2; i++) r = await exec.step([a!, b!]);
      expect(r.map((x) => [x.step, x.totalSteps])).toEqual([
        [4, 4],
        [3, 5],
      ]);
      // a is done (frozen in the engine): b steps alone; one engine step per call.
      expect((await exec.step([b!]))[0]).toMatchObject({ step: 4, totalSteps: 5 });
      const stepsSent = ops().filter((h) => h.op === 'step');
      expect(stepsSent).toHaveLength(5);
      expect(stepsSent.every((h) => h.job === 1 && h.count === 1)).toBe(true);
      // Decode and release a alone: the engine is asked for its sample id only.
      const [imgA] = await exec.decode([a!]);
      expect(imgA!.data.every((v) => v === 10)).toBe(true);
      expect(ops().at(-1)).toMatchObject({ op: 'decode', job: 1, samples: [0] });
      await exec.release([a!]);
      expect(ops().at(-1)).toMatchObject({ op: 'release', job: 1, samples: [0] });
      expect((await exec.step([b!]))[0]).toMatchObject({ step: 5, totalSteps: 5 });
      const [imgB] = await exec.decode([b!]);
      expect(imgB!.data.every((v) => v === 20)).toBe(true);
      await exec.release([b!]);
      const last = ops().at(-1)!;
      expect(last).toMatchObject({ op: 'release', job: 1 });
      expect(last).not.toHaveProperty('samples');
      expect((await exec.engineInfo()).jobs).toBe(0);
    } finally {
      await exec.close();
    }
  }, 60_000);

  it('previews the named samples of a joined job', async () => {
    const { exec, ops } = await executor();
    try {
      const [a] = await exec.prepare([request(1, 3)]);
      const [b] = await exec.prepare([request(2, 3)]);
      const r = await exec.step([b!, a!], { preview: true });
      expect(ops().at(-1)).toMatchObject({ op: 'latents', job: 1, samples: [1, 0] });
      // The fake engine's latents are each sample's id: b's preview (id 1) is not a's (id 0).
      expect(r[0]!.preview).toBeDefined();
      expect(Buffer.from(r[0]!.preview!.data).equals(Buffer.from(r[1]!.preview!.data))).toBe(false);
      await exec.release([a!, b!]);
    } finally {
      await exec.close();
    }
  }, 60_000);

  it('starts a new job for another size, a full batch, or with step caching', async () => {
    const other = await executor({ maxBatch: 2 });
    try {
      const [a] = await other.exec.prepare([request(1, 3)]);
      await other.exec.prepare([request(2, 3, 80)]); // another size
      await other.exec.prepare([request(3, 3)]); // joins a: batch 2
      await other.exec.prepare([request(4, 3)]); // a's job is full
      expect(other.ops().map((h) => h.op)).toEqual(['info', 'load', 'info', 'prepare', 'prepare', 'join', 'prepare']);
      expect((await other.exec.engineInfo()).jobs).toBe(3);
      // The counters /metrics shows: three jobs prepared, one sample joined.
      expect(await other.exec.stats()).toMatchObject({ engineJobs: 3, joinedSamples: 1 });
      void a;
    } finally {
      await other.exec.close();
    }
    const cached = await executor({ stepCache: { threshold: 0.1 } });
    try {
      await cached.exec.prepare([request(1, 3)]);
      await cached.exec.prepare([request(2, 3)]);
      expect(cached.ops().filter((h) => h.op === 'join')).toHaveLength(0);
      expect(cached.ops().filter((h) => h.op === 'prepare')).toHaveLength(2);
      expect(await cached.exec.stats()).toMatchObject({ engineJobs: 2, joinedSamples: 0 });
    } finally {
      await cached.exec.close();
    }
  }, 60_000);

  it("joins only a job of the same mode (precision plan, XL's step)", async () => {
    const e = await executor({ maxBatch: 4 });
    try {
      await e.exec.prepare([request(1, 3)]); // original: the base plan
      await e.exec.prepare([{ ...request(2, 3), mode: 'S' }]); // S: plan fp8, a job of its own
      await e.exec.prepare([{ ...request(3, 3), mode: 'S' }]); // joins the S job
      await e.exec.prepare([request(4, 3)]); // joins the original job
      await e.exec.prepare([{ ...request(5, 3), mode: 'XL' }]); // XL: the base plan, its own step (bf16 branches)
      await e.exec.prepare([{ ...request(6, 3), mode: 'XL' }]); // joins the XL job
      const sent = e.ops().filter((h) => h.op === 'prepare' || h.op === 'join');
      expect(sent.map((h) => [h.op, h.job ?? null, h.plan ?? null, h.branch_bf16 ?? false])).toEqual([
        ['prepare', null, null, false],
        ['prepare', null, 'fp8', false],
        ['join', 2, 'fp8', false],
        ['join', 1, null, false],
        ['prepare', null, null, true],
        ['join', 3, null, true],
      ]);
      expect((await e.exec.engineInfo()).jobs).toBe(3);
    } finally {
      await e.exec.close();
    }
  }, 60_000);
});
