/**
 * L and M on the CUDA executor from calibrated plans (issue 15; `cuda-calibration.ts`, `cuda-plan-manifest.ts`),
 * against the fake engine process (test/helpers/fake-cuda-engine.mjs answers `calibrate` with a per-layer table drawn
 * from its inputs and measures `verify` plans from that table): the first start calibrates on a separate engine and
 * stores the manifest, a later start reads it, L and M jobs name their plans, another engine build or a failing
 * calibration is handled, an f32 engine never calibrates.
 */
import { chmodSync, copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { servedCudaPlans } from '../../../src/pipeline/cuda-calibration.ts';
import type { CudaExecutorOptions } from '../../../src/pipeline/cuda-executor.ts';
import type { CudaPlanManifest } from '../../../src/pipeline/cuda-plan-manifest.ts';
import { type CudaModePlan, cudaPlannedBudgets } from '../../../src/pipeline/cuda-planner.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { UnknownModelError } from '../../../src/service/errors.ts';
import { ModelCatalog } from '../../../src/service/models.ts';
import {
  FAKE_CUDA_ENGINE,
  fakeCudaExecutor,
  fakeRequest,
  type LoggedFrame,
} from '../../helpers/fake-cuda-engine-log.ts';
import { useTempDir } from '../../helpers/temp-dir.ts';

const tmp = useTempDir('fluxql-cuda-calibration-');

const request = (seed: number, mode?: string): SampleRequest => fakeRequest(seed, mode !== undefined ? { mode } : {});

const ops = (frames: LoggedFrame[], op: string) => frames.filter((f) => f.header.op === op);

/** The manifests stored under `cacheDir`. */
function manifests(cacheDir: string): CudaPlanManifest[] {
  const dir = join(cacheDir, 'cuda-plans');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as CudaPlanManifest);
}

async function withExecutor(
  dir: string,
  options: Partial<CudaExecutorOptions>,
  run: (x: Awaited<ReturnType<typeof fakeCudaExecutor>>) => Promise<void>,
) {
  const x = await fakeCudaExecutor(dir, options);
  try {
    await run(x);
  } finally {
    await x.exec.close();
  }
}

describe('CUDA executor: planned L and M (fake engine process)', () => {
  it('calibrates on first start, stores the manifest, loads L, M, S plans and prepares L and M with them', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    await withExecutor(dir, { cacheDir }, async ({ exec, frames }) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'L', 'M', 'S']);
      expect(exec.info().capabilities.unavailable).toBeUndefined();
      const f = frames();
      // The calibration engine: load without plans, one per-layer calibrate, then verify-only calls.
      const cals = ops(f, 'calibrate');
      expect(cals[0]!.header).toMatchObject({ batch: 2, height: 512, width: 512, latents: 'payload' });
      expect(cals[0]!.header).not.toHaveProperty('per_layer', false);
      expect((cals[0]!.header.sigmas as number[]).length).toBe(4); // 3 steps of the real schedule
      expect(cals.length).toBeGreaterThan(1);
      for (const c of cals.slice(1)) {
        expect(c.header.per_layer).toBe(false);
        expect(Object.keys(c.header.verify as object).length).toBeGreaterThan(0);
      }
      // The preset is measured too.
      expect(cals.some((c) => (c.header.verify as Record<string, string> | undefined)?.fp8 === 'fp8')).toBe(true);
      const loads = ops(f, 'load');
      expect(loads).toHaveLength(2);
      expect(loads[0]!.header).not.toHaveProperty('plans');
      const [m] = manifests(cacheDir);
      expect(m).toBeDefined();
      expect(m!.format).toBe('fluxql-cuda-plans');
      expect(m!.budgets).toEqual(cudaPlannedBudgets());
      expect(m!.table.layers.length).toBe(8 + 2 * 10 + 3 * 4 + 2); // flux-tiny: 2 double, 3 single blocks
      for (const mode of ['L', 'M', 'S']) {
        const p = m!.plans[mode]!;
        expect(p.measuredError!).toBeLessThanOrEqual(p.budget);
      }
      // The served engine loads exactly the manifest's plans.
      const served = m!.served;
      const plans = loads[1]!.header.plans as Record<string, string>;
      for (const mode of ['L', 'M', 'S'] as const) expect(plans[served[mode].plan]).toBe(served[mode].rules);
      expect(served.L.rules).not.toBe('bf16'); // the synthetic table leaves room for fp8 layers under 1 %
      // L and M jobs name their plans; original names none; their T5 length is the calibration's.
      const [l] = await exec.prepare([request(1, 'L')]);
      const [mm] = await exec.prepare([request(2, 'M')]);
      const [o] = await exec.prepare([request(3)]);
      const prepares = ops(frames(), 'prepare');
      expect(prepares.map((p) => p.header.plan ?? null)).toEqual([served.L.plan, served.M.plan, null]);
      expect(prepares[0]!.header.t5_len).toBe(cals[0]!.header.t5_len);
      await exec.step([l!]);
      await exec.step([mm!]);
      await exec.step([o!]);
      await exec.release([l!, mm!, o!]);
    });
    // A second start reads the manifest: no calibrate, one load with the same plans.
    await withExecutor(dir, { cacheDir }, async ({ exec, frames }) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'L', 'M', 'S']);
      const f = frames();
      expect(ops(f, 'calibrate')).toHaveLength(0);
      expect(ops(f, 'load')).toHaveLength(1);
      const served = manifests(cacheDir)[0]!.served;
      expect((ops(f, 'load')[0]!.header.plans as Record<string, string>)[served.M.plan]).toBe(served.M.rules);
    });
    expect(manifests(cacheDir)).toHaveLength(1);
  }, 60_000);

  it('ignores a manifest of another engine build, or one whose identity fields were changed', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    await withExecutor(dir, { cacheDir }, async ({ frames }) => {
      expect(ops(frames(), 'calibrate').length).toBeGreaterThan(0);
    });
    // Another build: the same protocol in another executable.
    const other = join(dir, 'other-engine.mjs');
    copyFileSync(FAKE_CUDA_ENGINE, other);
    writeFileSync(other, `${readFileSync(other, 'utf8')}\n// another build\n`);
    chmodSync(other, 0o755);
    await withExecutor(dir, { cacheDir, engineBin: other }, async ({ exec, frames }) => {
      expect(ops(frames(), 'calibrate').length).toBeGreaterThan(0);
      expect(exec.info().capabilities.modes).toContain('L');
    });
    const stored = manifests(cacheDir);
    expect(stored).toHaveLength(2);
    expect(new Set(stored.map((m) => m.engine)).size).toBe(2);
    // The first build's file, its engine field edited by hand: not trusted, calibrated again (and rewritten).
    const plansDir = join(cacheDir, 'cuda-plans');
    for (const name of readdirSync(plansDir)) {
      const m = JSON.parse(readFileSync(join(plansDir, name), 'utf8')) as CudaPlanManifest;
      writeFileSync(join(plansDir, name), JSON.stringify({ ...m, engine: 'build 0000 | elsewhere' }));
    }
    await withExecutor(dir, { cacheDir }, async ({ frames }) => {
      expect(ops(frames(), 'calibrate').length).toBeGreaterThan(0);
    });
  }, 60_000);

  it('serves original, XL and S with L and M unavailable (and why) when calibrate fails', async () => {
    for (const fail of ['out of memory', 'exit']) {
      const dir = tmp();
      const cacheDir = join(dir, 'cache');
      const env = { ...process.env, FAKE_ENGINE_CALIBRATE_FAIL: fail };
      await withExecutor(dir, { cacheDir, env }, async ({ exec, frames }) => {
        const caps = exec.info().capabilities;
        expect(caps.modes).toEqual(['original', 'XL', 'S']);
        expect(caps.unavailable?.map((u) => u.mode)).toEqual(['L', 'M']);
        expect(caps.unavailable![0]!.reason).toMatch(
          fail === 'exit' ? /per-layer planner failed: .*CUDA error/s : /per-layer planner failed: .*out of memory/,
        );
        expect(manifests(cacheDir)).toHaveLength(0);
        // The serving engine loaded the fp8 preset for S and runs original and S jobs.
        const loads = ops(frames(), 'load');
        expect(loads.at(-1)!.header.plans).toEqual({ fp8: 'fp8' });
        const [s, o] = await exec.prepare([request(1, 'S'), request(2)]);
        await exec.step([s!, o!]);
        expect((await exec.decode([s!, o!])).length).toBe(2);
        await exec.release([s!, o!]);
        // The service refuses L with the reason.
        const catalog = new ModelCatalog(exec.info(), { batchSize: 4, defaultSize: 'original' });
        const err = (() => {
          try {
            catalog.resolve('L');
          } catch (e) {
            return e;
          }
        })();
        expect(err).toBeInstanceOf(UnknownModelError);
        expect((err as Error).message).toMatch(/is not served here: the per-layer planner failed/);
      });
    }
  }, 60_000);

  it('keeps every plan within its budget when measured errors are far over the prediction (base rules)', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    const env = { ...process.env, FAKE_ENGINE_VERIFY_SCALE: '1000' };
    await withExecutor(dir, { cacheDir, env }, async ({ exec }) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'L', 'M', 'S']);
      const m = manifests(cacheDir)[0]!;
      // Tightening ends at the base for each mode; the preset is over S's budget too, so S is not the preset.
      expect(m.preset.kept).toBe(false);
      expect([m.served.L.rules, m.served.M.rules, m.served.S.rules]).toEqual(['bf16', 'bf16', 'bf16']);
      // One plan name for the identical rules: one set of alternates (none, here).
      expect(new Set([m.served.L.plan, m.served.M.plan, m.served.S.plan])).toEqual(new Set(['L']));
    });
  }, 60_000);

  it('never calibrates an f32 engine: L, M and S unavailable with the reason', async () => {
    const dir = tmp();
    await withExecutor(dir, { cacheDir: join(dir, 'cache'), precision: 'f32' }, async ({ exec, frames }) => {
      const caps = exec.info().capabilities;
      expect(caps.modes).toEqual(['original', 'XL']);
      expect(caps.unavailable?.map((u) => u.mode)).toEqual(['L', 'M', 'S']);
      expect(caps.unavailable![0]!.reason).toMatch(/f32 engine has no fp8 path/);
      expect(ops(frames(), 'calibrate')).toHaveLength(0);
      expect(ops(frames(), 'load')).toHaveLength(1);
    });
  }, 60_000);

  it('without a cache folder: no calibration, L and M unavailable with the reason', async () => {
    await withExecutor(tmp(), {}, async ({ exec, frames }) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'S']);
      expect(exec.info().capabilities.unavailable![0]!.reason).toMatch(/cacheDir/);
      expect(ops(frames(), 'calibrate')).toHaveLength(0);
    });
  }, 60_000);
});

describe('servedCudaPlans', () => {
  const plan = (mode: string, budget: number, rules: string, gainMs: number): CudaModePlan => ({
    mode,
    budget,
    fp8Layers: rules === 'bf16' ? [] : rules.split(';').map((r) => r.split('=')[0]!),
    rules,
    counts: { bf16: 0, fp8: 0 },
    predictedError: 0,
    gainMs,
    predictedStepMs: 0,
  });
  const plans = {
    L: plan('L', 0.01, 'transformer/a=fp8', 1),
    M: plan('M', 0.015, 'transformer/a=fp8', 1),
    S: plan('S', 0.02, 'transformer/a=fp8;transformer/b=fp8', 2),
  };

  it('keeps the preset for S when it fits the budget and saves at least as much', () => {
    const { served, kept } = servedCudaPlans(plans, { measuredError: 0.019, gainMs: 2 });
    expect(kept).toBe(true);
    expect(served.S).toEqual({ plan: 'fp8', rules: 'fp8' });
    // M's rules are L's: one plan name.
    expect(served.L).toEqual({ plan: 'L', rules: 'transformer/a=fp8' });
    expect(served.M).toEqual({ plan: 'L', rules: 'transformer/a=fp8' });
  });

  it('serves the planned S when the preset is over budget, slower, or not priced', () => {
    for (const preset of [
      { measuredError: 0.021, gainMs: 5 },
      { measuredError: 0.01, gainMs: 1.5 },
      { measuredError: 0.01, gainMs: null },
    ]) {
      const { served, kept } = servedCudaPlans(plans, preset);
      expect(kept).toBe(false);
      expect(served.S).toEqual({ plan: 'S', rules: 'transformer/a=fp8;transformer/b=fp8' });
    }
  });
});
