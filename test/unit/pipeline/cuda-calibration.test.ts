/**
 * L and M on the CUDA executor from calibrated plans (issue 15; `cuda-calibration.ts`, `cuda-plan-manifest.ts`),
 * against the fake engine process (test/helpers/fake-cuda-engine.mjs answers `calibrate` with a per-layer table drawn
 * from its inputs and measures `verify` plans from that table): the first start calibrates on a separate engine and
 * stores the manifest, a later start reads it, L and M jobs name their plans, another engine build or a failing
 * calibration is handled, an f32 engine never calibrates. Per-mode step caching (`cuda-step-cache.ts`): the fake
 * engine's images move by a set number of grey levels per cached step (FAKE_ENGINE_CACHED_STEP_ERR) and its first
 * block's change per step is given (FAKE_ENGINE_CACHE_CHANGES), so each candidate threshold has a known PSNR.
 */
import { chmodSync, copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CUDA_PLANNER_VERSION, servedCudaPlans } from '../../../src/pipeline/cuda-calibration.ts';
import type { CudaExecutorOptions } from '../../../src/pipeline/cuda-executor.ts';
import { type CudaPlanManifest, cudaPlanManifestPath } from '../../../src/pipeline/cuda-plan-manifest.ts';
import { type CudaModePlan, cudaPlannedBudgets } from '../../../src/pipeline/cuda-planner.ts';
import {
  bestRuleOutcome,
  CUDA_MODE_PSNR_FLOORS,
  CUDA_STEP_CACHE_CALIBRATION,
  CUDA_THRESHOLD_CANDIDATES,
} from '../../../src/pipeline/cuda-step-cache.ts';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { largestPassingThreshold, mostCachedSteps } from '../../../src/pipeline/flux/step-cache-threshold.ts';
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

/** The frames the serving engine got: those after the last `load` (the calibration engine logs to the same file). */
const serving = (frames: LoggedFrame[]) => frames.slice(frames.findLastIndex((f) => f.header.op === 'load'));

/** The step cache a prepare sent, in its wire form (null: none). */
const sentCache = (f: LoggedFrame) => (f.header.step_cache as Record<string, number> | undefined) ?? null;

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
      // fp8row is not asked (CUDA_PLANNER_FP8ROW off): no fp8row trial, no fp8row rule.
      for (const c of cals) expect(c.header).not.toHaveProperty('fp8row');
      expect((cals[0]!.header.sigmas as number[]).length).toBe(4); // 3 steps of the real schedule
      expect(cals.length).toBeGreaterThan(1);
      for (const c of cals.slice(1)) {
        expect(c.header.per_layer).toBe(false);
        expect(Object.keys(c.header.verify as object).length).toBeGreaterThan(0);
      }
      // The preset is measured too.
      expect(cals.some((c) => (c.header.verify as Record<string, string> | undefined)?.fp8 === 'fp8')).toBe(true);
      // The calibration engine loads twice (without plans, then with them for the step-cache images), then serving.
      const loads = ops(f, 'load');
      expect(loads).toHaveLength(3);
      expect(loads[0]!.header).not.toHaveProperty('plans');
      expect(loads[1]!.header.plans).toEqual(loads[2]!.header.plans);
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
      const plans = loads[2]!.header.plans as Record<string, string>;
      for (const mode of ['L', 'M', 'S'] as const) expect(plans[served[mode].plan]).toBe(served[mode].rules);
      expect(served.L.rules).not.toBe('bf16'); // the synthetic table leaves room for fp8 layers under 1 %
      expect(m!.fp8row).toBe(false);
      for (const mode of ['L', 'M', 'S'] as const) {
        expect(served[mode].rules).not.toMatch(/=fp8row/);
        expect(m!.plans[mode]!.counts.fp8row).toBe(0);
      }
      // Step caching per mode: the fake's images do not move with caching here (no error per cached step), so every
      // candidate keeps every floor and each rule's search stops at the first candidate caching every step the rule
      // allows (the fake's first-block change is 0.5: 0.8 is the first candidate above it); 2 in a row caches more.
      const steps = CUDA_STEP_CACHE_CALIBRATION.steps;
      const [most1, most2] = [mostCachedSteps(steps, 1, 1), mostCachedSteps(steps, 1, 2)];
      expect([most1, most2]).toEqual([14, 18]);
      for (const mode of ['L', 'M', 'S'] as const) {
        expect(m!.stepCache[mode]).toMatchObject({ threshold: 0.8, warmupSteps: 1, maxConsecutive: 2, psnr: 100 });
        expect(m!.stepCache[mode]).toMatchObject({ minPsnr: CUDA_MODE_PSNR_FLOORS[mode], cachedSteps: most2 });
        const tried = m!.stepCache[mode].tried;
        expect(tried.filter((t) => t.psnr === 100 && t.threshold === 0.8)).toEqual([
          { threshold: 0.8, psnr: 100, maxConsecutive: 1, cachedSteps: most1 },
          { threshold: 0.8, psnr: 100, maxConsecutive: 2, cachedSteps: most2 },
        ]);
      }
      // The step-cache images: one batch-1 job per calibration prompt at 512x512, 28 steps, the reference first.
      const calPrepares = ops(f.slice(0, f.indexOf(loads[2]!)), 'prepare');
      expect(calPrepares[0]!.header).toMatchObject({ batch: 1, height: 512, width: 512, latents: 'payload' });
      expect((calPrepares[0]!.header.sigmas as number[]).length).toBe(29);
      expect(calPrepares.slice(0, 2).map((p) => [p.header.plan ?? null, sentCache(p)])).toEqual([
        [null, null],
        [null, null],
      ]);
      // L and M jobs name their plans and send their step cache; original names none and sends none.
      const [l] = await exec.prepare([request(1, 'L')]);
      const [mm] = await exec.prepare([request(2, 'M')]);
      const [o] = await exec.prepare([request(3)]);
      const prepares = ops(serving(frames()), 'prepare');
      expect(prepares.map((p) => p.header.plan ?? null)).toEqual([served.L.plan, served.M.plan, null]);
      const cache = { threshold: 0.8, warmup_steps: 1, max_consecutive: 2 };
      expect(prepares.map(sentCache)).toEqual([cache, cache, null]);
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

  it('CUDA_PLANNER_FP8ROW: asks fp8row, routes some layers to it, verifies and serves those rules', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    await withExecutor(dir, { cacheDir, plannerFp8row: true }, async ({ exec, frames }) => {
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'L', 'M', 'S']);
      const f = frames();
      const cals = ops(f, 'calibrate');
      // The per-layer table is asked with fp8row; verify-only calls need no fp8row trial.
      expect(cals[0]!.header.fp8row).toBe(true);
      for (const c of cals.slice(1)) expect(c.header).not.toHaveProperty('fp8row');
      const [m] = manifests(cacheDir);
      expect(m!.fp8row).toBe(true);
      expect(m!.table.layers.every((l) => l.fp8row === true && l.rel_err_fp8row! < l.rel_err_fp8!)).toBe(true);
      // The fake's fp8row is a third of the fp8 error at 0.7x + 1 us: where the budget binds, some layers take it.
      const rows = (['L', 'M', 'S'] as const).map((k) => m!.plans[k]!.counts.fp8row);
      expect(rows.some((n) => n > 0)).toBe(true);
      const verified = cals.slice(1).flatMap((c) => Object.values(c.header.verify as Record<string, string>));
      for (const mode of ['L', 'M', 'S'] as const) {
        const p = m!.plans[mode]!;
        expect(p.rules.split(';').filter((r) => r.endsWith('=fp8row'))).toHaveLength(p.counts.fp8row);
        expect(p.rules.split(';').filter((r) => r.endsWith('=fp8'))).toHaveLength(p.counts.fp8);
        expect(p.measuredError!).toBeLessThanOrEqual(p.budget);
        // Measured whole by verify, each layer under its own algorithm (the fake's sqrt(sum e^2)).
        expect(verified).toContain(p.rules);
        const byName = new Map(m!.table.layers.map((l) => [l.name, l]));
        const e2 =
          p.fp8Layers.reduce((a, n) => a + byName.get(n)!.rel_err_fp8! ** 2, 0) +
          p.fp8rowLayers.reduce((a, n) => a + byName.get(n)!.rel_err_fp8row! ** 2, 0);
        expect(p.measuredError!).toBeCloseTo(Math.sqrt(e2), 12);
      }
      const withRow = (['L', 'M', 'S'] as const).find((k) => m!.plans[k]!.counts.fp8row > 0)!;
      expect(m!.plans[withRow]!.rules).toMatch(/=fp8row/);
      // The serving engine loads the plans; its `loaded` counts fp8 and fp8row layers alike.
      const loads = ops(f, 'load');
      const plans = loads.at(-1)!.header.plans as Record<string, string>;
      for (const mode of ['L', 'M', 'S'] as const) expect(plans[m!.served[mode].plan]).toBe(m!.served[mode].rules);
      // The models query: layers per algorithm, fp8row listed.
      const catalog = new ModelCatalog(exec.info(), { batchSize: 4, defaultSize: 'original' });
      const byMode = Object.fromEntries(catalog.entries.map((e) => [e.mode, e.plan]));
      for (const k of ['L', 'M', 'S'] as const) {
        const algs = Object.fromEntries(byMode[k]!.algorithms.map((a) => [a.algorithm, a.layers]));
        const preset = k === 'S' && m!.preset.kept;
        expect(algs.fp8row).toBe(preset ? 0 : m!.plans[k]!.counts.fp8row);
        expect(algs.bf16! + algs.fp8! + algs.fp8row!).toBe(m!.table.layers.length);
      }
      expect(byMode[withRow]!.algorithms.find((a) => a.algorithm === 'fp8row')!.layers).toBeGreaterThan(0);
    });
    // Off again on the same cache: another identity, so it calibrates anew without fp8row.
    await withExecutor(dir, { cacheDir }, async ({ frames }) => {
      const cals = ops(frames(), 'calibrate');
      expect(cals.length).toBeGreaterThan(0);
      for (const c of cals) expect(c.header).not.toHaveProperty('fp8row');
    });
    expect(
      manifests(cacheDir)
        .map((x) => x.fp8row)
        .sort(),
    ).toEqual([false, true]);
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
        // The serving engine loaded the fp8 preset for S and runs original and S jobs, neither caching steps.
        const loads = ops(frames(), 'load');
        expect(loads.at(-1)!.header.plans).toEqual({ fp8: 'fp8' });
        const [s, o] = await exec.prepare([request(1, 'S'), request(2)]);
        expect(ops(serving(frames()), 'prepare').map(sentCache)).toEqual([null, null]);
        expect(exec.info().modePlans).toBeUndefined();
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

describe('CUDA executor: per-mode step caching from the calibration (fake engine process)', () => {
  /**
   * The first block's change per step: steps 1, 3, 5 at 0.025, 7, 9 at 0.06, 11, 13, 15 at 0.12, 17 at 0.4, every
   * other step 2 (never cached). With one grey level per cached step, a candidate's PSNR is 20 log10(255 / cached):
   * 0.02 caches none, 0.03-0.05 three (38.6 dB), 0.07-0.1 five (34.2 dB), 0.15-0.3 eight (30.1 dB), 0.5 up nine
   * (29.1 dB). So L keeps 0.05 (0.07 is under 38), M 0.1, S 0.3. No two low-change steps follow each other, so 2
   * cached in a row makes the same decisions: a tie, each mode keeps 1 in a row (the less aggressive rule).
   */
  const graded = {
    FAKE_ENGINE_CACHE_CHANGES: '2,0.025,2,0.025,2,0.025,2,0.06,2,0.06,2,0.12,2,0.12,2,0.12,2,0.4,2',
    FAKE_ENGINE_CACHED_STEP_ERR: '1',
  };

  it('stores each mode its largest threshold over its floor, sends it per job, reports it in the catalogue', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    const env = { ...process.env, ...graded };
    await withExecutor(dir, { cacheDir, env }, async ({ exec, frames }) => {
      const [m] = manifests(cacheDir);
      expect(m!.planner).toBe(CUDA_PLANNER_VERSION);
      const psnr = (cached: number) => Math.round(20 * Math.log10(255 / cached) * 100) / 100;
      const got = Object.fromEntries(
        (['L', 'M', 'S'] as const).map((k) => {
          const c = m!.stepCache[k];
          return [k, [c.threshold, c.maxConsecutive, c.cachedSteps, Math.round(c.psnr * 100) / 100, c.uncachedPsnr]];
        }),
      );
      expect(got).toEqual({
        L: [0.05, 1, 3, psnr(3), 100],
        M: [0.1, 1, 5, psnr(5), 100],
        S: [0.3, 1, 8, psnr(8), 100],
      });
      // Ascending candidates up to the first failure, per rule.
      const l = m!.stepCache.L.tried;
      expect(l.map((t) => [t.maxConsecutive, t.threshold])).toEqual(
        [1, 2].flatMap((r) => [0.02, 0.03, 0.05, 0.07].map((t) => [r, t])),
      );
      expect(m!.stepCache.S.tried.at(-1)).toMatchObject({ threshold: 0.5, maxConsecutive: 2, cachedSteps: 9 });
      // Jobs: each planned mode's own threshold; original and XL none.
      const modes = ['original', 'XL', 'L', 'M', 'S'];
      const handles = await exec.prepare(modes.map((mode, i) => request(i + 1, mode)));
      const sent = ops(serving(frames()), 'prepare').map((p) => sentCache(p)?.threshold ?? null);
      expect(sent).toEqual([null, null, 0.05, 0.1, 0.3]);
      await exec.step(handles);
      await exec.step(handles);
      await exec.release(handles);
      // Steps counted over the caching jobs; no executor-wide threshold.
      expect((await exec.stats()).stepCache).toMatchObject({ threshold: null });
      // The models query's source: the catalogue's plan per mode.
      const catalog = new ModelCatalog(exec.info(), { batchSize: 4, defaultSize: 'original' });
      const byMode = Object.fromEntries(catalog.entries.map((e) => [e.mode, e.plan]));
      expect(byMode.original).toBeNull();
      expect(byMode.XL).toBeNull();
      for (const k of ['L', 'M', 'S'] as const) {
        expect(byMode[k]!.stepCache).toEqual({
          threshold: m!.stepCache[k].threshold,
          maxConsecutive: 1,
          fullSteps: m!.stepCache[k].fullSteps,
          cachedSteps: m!.stepCache[k].cachedSteps,
          psnr: m!.stepCache[k].psnr,
          minPsnr: CUDA_MODE_PSNR_FLOORS[k],
        });
        expect(byMode[k]!.errorBudget).toBe(cudaPlannedBudgets()[k]);
        expect(byMode[k]!.algorithms.reduce((a, x) => a + x.layers, 0)).toBe(m!.table.layers.length);
        expect(byMode[k]!.algorithms.map((a) => a.algorithm)).not.toContain('fp8row');
      }
    });
  }, 60_000);

  it('serves a mode without caching when every candidate misses its floor; never joins a caching job', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    // Every candidate caches every step the rule allows (14 of 28): 0.3 x 14 = 4 grey levels, 36.1 dB: under L's 38,
    // over M's 34 and S's 30 (which stop at the first candidate: larger ones would cache the same steps). L kept no
    // threshold, so 2 in a row is not tried for it; for M and S it caches 18 of 28: 5 grey levels, 34.15 dB, kept.
    const env = { ...process.env, FAKE_ENGINE_CACHE_CHANGES: '0.01', FAKE_ENGINE_CACHED_STEP_ERR: '0.3' };
    await withExecutor(dir, { cacheDir, env, maxBatch: 4 }, async ({ exec, frames }) => {
      const [m] = manifests(cacheDir);
      expect(m!.stepCache.L).toMatchObject({ threshold: 0, cachedSteps: 0, psnr: 100 });
      expect(m!.stepCache.L.tried).toEqual([
        { threshold: 0.02, psnr: expect.closeTo(36.09, 2), maxConsecutive: 1, cachedSteps: 14 },
      ]);
      for (const k of ['M', 'S'] as const) {
        expect(m!.stepCache[k]).toMatchObject({ threshold: 0.02, maxConsecutive: 2, cachedSteps: 18 });
        expect(m!.stepCache[k].tried.map((t) => [t.maxConsecutive, t.cachedSteps])).toEqual([
          [1, 14],
          [2, 18],
        ]);
      }
      expect(exec.info().capabilities.modes).toEqual(['original', 'XL', 'L', 'M', 'S']);
      // L: no step cache, so a later L request joins its running job; S caches: a later S request gets a job of its
      // own (the engine refuses joins into a caching job).
      await exec.prepare([request(1, 'L')]);
      await exec.prepare([request(2, 'S')]);
      await exec.prepare([request(3, 'L')]);
      await exec.prepare([request(4, 'S')]);
      const sent = serving(frames()).filter((f) => f.header.op === 'prepare' || f.header.op === 'join');
      expect(sent.map((f) => [f.header.op, f.header.plan ?? null, sentCache(f)?.threshold ?? null])).toEqual([
        ['prepare', m!.served.L.plan, null],
        ['prepare', m!.served.S.plan, 0.02],
        ['join', m!.served.L.plan, null],
        ['prepare', m!.served.S.plan, 0.02],
      ]);
      const catalog = new ModelCatalog(exec.info(), { batchSize: 4, defaultSize: 'original' });
      expect(catalog.resolve('L').plan!.stepCache).toMatchObject({ threshold: 0, cachedSteps: 0, minPsnr: 38 });
    });
  }, 60_000);

  it('keeps 2 cached steps in a row for a mode whose floor allows more caching with it (S), 1 for the others', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    /**
     * Low-change steps in pairs (1-2, 4-5 at 0.025; 7-8, 10-11 at 0.06; 13-14, 16-17 at 0.12), every other step 2.
     * At most 1 in a row caches one step of each pair under the threshold, 2 in a row both. One grey level per cached
     * step (PSNR 20 log10(255 / cached)): 1 in a row: 0.03-0.05 two (42.1 dB), 0.07-0.1 four (36.1), 0.15-1.2 six
     * (32.6); 2 in a row: 0.03-0.05 four, 0.07-0.1 eight (30.07), 0.15 up twelve (26.5).
     * L (38): 0.05 at 1 in a row (2 cached); at 2 only 0.02 passes, caching none: keeps 1.
     * M (34): 0.1 at 1 (4 cached); at 2, 0.05 (4 cached): a tie, keeps 1 (less aggressive).
     * S (30): 1.2 at 1 (6 cached); at 2, 0.1 (8 cached, 30.07 dB): keeps 2 in a row.
     */
    const env = {
      ...process.env,
      FAKE_ENGINE_CACHE_CHANGES: '2,0.025,0.025,2,0.025,0.025,2,0.06,0.06,2,0.06,0.06,2,0.12,0.12,2,0.12,0.12,2',
      FAKE_ENGINE_CACHED_STEP_ERR: '1',
    };
    await withExecutor(dir, { cacheDir, env }, async ({ exec, frames }) => {
      const [m] = manifests(cacheDir);
      const got = Object.fromEntries(
        (['L', 'M', 'S'] as const).map((k) => {
          const c = m!.stepCache[k];
          return [k, [c.threshold, c.maxConsecutive, c.cachedSteps]];
        }),
      );
      expect(got).toEqual({ L: [0.05, 1, 2], M: [0.1, 1, 4], S: [0.1, 2, 8] });
      expect(m!.stepCache.S.psnr).toBeCloseTo(20 * Math.log10(255 / 8), 2);
      // L: 1 in a row up to its first failure (0.07), then 2 in a row up to its own (0.03).
      expect(m!.stepCache.L.tried.map((t) => [t.maxConsecutive, t.threshold, t.cachedSteps])).toEqual([
        [1, 0.02, 0],
        [1, 0.03, 2],
        [1, 0.05, 2],
        [1, 0.07, 4],
        [2, 0.02, 0],
        [2, 0.03, 4],
      ]);
      // S: every candidate passes at 1 in a row (six cached, no saturation), then 2 in a row fails at 0.15.
      expect(m!.stepCache.S.tried.filter((t) => t.maxConsecutive === 1)).toHaveLength(CUDA_THRESHOLD_CANDIDATES.length);
      expect(m!.stepCache.S.tried.at(-1)).toMatchObject({ threshold: 0.15, maxConsecutive: 2, cachedSteps: 12 });
      // Jobs prepare with their mode's rule.
      const handles = await exec.prepare(['L', 'M', 'S'].map((mode, i) => request(i + 1, mode)));
      const sent = ops(serving(frames()), 'prepare').map(sentCache);
      expect(sent).toEqual([
        { threshold: 0.05, warmup_steps: 1, max_consecutive: 1 },
        { threshold: 0.1, warmup_steps: 1, max_consecutive: 1 },
        { threshold: 0.1, warmup_steps: 1, max_consecutive: 2 },
      ]);
      await exec.release(handles);
      // The models query's source reports the rule.
      const catalog = new ModelCatalog(exec.info(), { batchSize: 4, defaultSize: 'original' });
      expect(['L', 'M', 'S'].map((k) => catalog.resolve(k).plan!.stepCache!.maxConsecutive)).toEqual([1, 1, 2]);
    });
  }, 60_000);

  it('recalibrates when the stored manifest is of another planner version or lacks the step caching', async () => {
    const dir = tmp();
    const cacheDir = join(dir, 'cache');
    await withExecutor(dir, { cacheDir }, async () => undefined);
    const plansDir = join(cacheDir, 'cuda-plans');
    const [name] = readdirSync(plansDir);
    const v3 = JSON.parse(readFileSync(join(plansDir, name!), 'utf8')) as CudaPlanManifest;
    // A version-1 manifest (no step caching, the fp8 plans alone) and a version-2 one (one caching rule, at most 1
    // in a row), each where its version kept it: their keys differ from today's.
    const { stepCache: _, stepCacheCalibration: __, ...v1 } = { ...v3, planner: '1' };
    const { rules: ___, ...cal2 } = v3.stepCacheCalibration;
    const one = (c: CudaPlanManifest['stepCache']['L']) => ({
      ...c,
      maxConsecutive: 1,
      tried: c.tried.filter((t) => t.maxConsecutive === 1).map(({ maxConsecutive: ____, ...t }) => t),
    });
    const v2 = {
      ...v3,
      planner: '2',
      stepCacheCalibration: { ...cal2, rule: { warmupSteps: 1, maxConsecutive: 1 } },
      stepCache: { L: one(v3.stepCache.L), M: one(v3.stepCache.M), S: one(v3.stepCache.S) },
    };
    for (const old of [v1, v2]) {
      const oldPath = cudaPlanManifestPath(cacheDir, 'flux-tiny', old as unknown as CudaPlanManifest);
      expect(oldPath).not.toBe(join(plansDir, name!));
      rmSync(join(plansDir, name!));
      writeFileSync(oldPath, JSON.stringify(old));
      await withExecutor(dir, { cacheDir }, async ({ frames }) => {
        expect(ops(frames(), 'calibrate').length).toBeGreaterThan(0);
      });
      const now = manifests(cacheDir).find((m) => m.planner === CUDA_PLANNER_VERSION)!;
      expect(now.stepCache.S).toMatchObject({ threshold: 0.8, maxConsecutive: 2 });
    }
    expect(
      manifests(cacheDir)
        .map((m) => m.planner)
        .sort(),
    ).toEqual(['1', '2', CUDA_PLANNER_VERSION]);
    // The current file, its version field, its step caching or its rule edited: not trusted, calibrated again.
    const halfRule = { S: { ...v3.stepCache.S, maxConsecutive: 1.5 } };
    for (const edit of [{ planner: '2' }, { stepCache: undefined }, { stepCache: { ...v3.stepCache, ...halfRule } }]) {
      writeFileSync(join(plansDir, name!), JSON.stringify({ ...v3, ...edit }));
      await withExecutor(dir, { cacheDir }, async ({ frames }) => {
        expect(ops(frames(), 'calibrate').length).toBeGreaterThan(0);
      });
      expect(manifests(cacheDir).find((m) => m.planner === CUDA_PLANNER_VERSION)!.stepCache.S).toMatchObject({
        threshold: 0.8,
        maxConsecutive: 2,
      });
    }
  }, 120_000); // six calibrations
});

describe('largestPassingThreshold', () => {
  it('keeps the largest candidate over the floor, stops at the first failure or a saturated candidate', async () => {
    const db: Record<number, number> = { 0.1: 45, 0.2: 39, 0.3: 31, 0.5: 40 };
    const tried: number[] = [];
    const measure = async (t: number) => {
      tried.push(t);
      return db[t]!;
    };
    expect(await largestPassingThreshold([0.1, 0.2, 0.3, 0.5], 35, measure)).toEqual({
      threshold: 0.2,
      psnr: 39,
      tried: [
        { threshold: 0.1, psnr: 45 },
        { threshold: 0.2, psnr: 39 },
        { threshold: 0.3, psnr: 31 },
      ],
    });
    expect(tried).toEqual([0.1, 0.2, 0.3]); // 0.5 never generated
    const none = await largestPassingThreshold([0.1, 0.2], 50, measure);
    expect(none).toMatchObject({ threshold: 0, psnr: null });
    const sat = await largestPassingThreshold([0.1, 0.2, 0.3], 30, async (t) => ({
      psnr: Number.POSITIVE_INFINITY,
      saturated: t >= 0.2,
    }));
    expect(sat).toEqual({
      threshold: 0.2,
      psnr: 100,
      tried: [
        { threshold: 0.1, psnr: 100 },
        { threshold: 0.2, psnr: 100 },
      ],
    });
    expect(CUDA_THRESHOLD_CANDIDATES).toEqual([...CUDA_THRESHOLD_CANDIDATES].sort((a, b) => a - b));
  });

  it('keeps the rule caching the most steps over all prompts; on a tie, or none kept, the earlier rule', () => {
    const o = (rule: number, threshold: number, totalCached: number) => ({
      rule,
      threshold,
      measured: { totalCached },
    });
    expect(bestRuleOutcome([o(1, 0.2, 26), o(2, 0.1, 30)]).rule).toBe(2);
    expect(bestRuleOutcome([o(1, 0.2, 26), o(2, 0.05, 26)]).rule).toBe(1);
    expect(bestRuleOutcome([o(1, 0.2, 26), o(2, 0, 0)]).rule).toBe(1);
    expect(bestRuleOutcome([o(1, 0, 0)]).rule).toBe(1);
  });

  it('counts the most steps the caching rule allows', () => {
    expect(mostCachedSteps(28, 1, 1)).toBe(14); // F C F C ... (engines/cuda/NOTES.md session 12b)
    expect(mostCachedSteps(6, 2, 3)).toBe(3); // F F C C C F (the executor test's warm-up 2 / 3 in a row)
    expect(mostCachedSteps(5, 0, 1)).toBe(2); // step 0 is full without a warm-up too
    expect(mostCachedSteps(1, 1, 1)).toBe(0);
  });
});

describe('servedCudaPlans', () => {
  const plan = (mode: string, budget: number, rules: string, gainMs: number): CudaModePlan => ({
    mode,
    budget,
    fp8Layers: rules === 'bf16' ? [] : rules.split(';').map((r) => r.split('=')[0]!),
    fp8rowLayers: [],
    rules,
    counts: { bf16: 0, fp8: 0, fp8row: 0 },
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
