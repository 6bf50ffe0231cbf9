/**
 * Elastic modes through FluxPipeline on flux-tiny: the S engine's step-cache state machine, plans in the manifest,
 * and the typed errors for unknown or unavailable modes. Engines and plans go to a temporary cache.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileEngine, PlanRequiredError } from '../../../../engines/compiler/compile.ts';
import { engineCompiler } from '../../../../engines/compiler/port.ts';
import { FluxPipeline } from '../../../../src/pipeline/flux/pipeline.ts';
import { relativeChange, stepCacheOf } from '../../../../src/pipeline/flux/step-cache.ts';
import { THRESHOLD_CANDIDATES } from '../../../../src/pipeline/flux/step-cache-calibration.ts';
import { ModeUnavailableError, resolveModeFor, UnknownModeError } from '../../../../src/shared/vocabulary/modes.ts';
import { MODEL_DIR } from '../../../helpers/paths.ts';

describe('elastic modes (flux-tiny)', () => {
  let cacheDir: string;
  let pipe: FluxPipeline;
  const gen = (mode: string, steps = 8) =>
    pipe.generate({
      prompt: 'a red cube on a blue sphere',
      height: 64,
      width: 64,
      steps,
      seed: 5,
      maxSequenceLength: 32,
      mode,
    });

  beforeAll(async () => {
    cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-elastic-'));
    pipe = await FluxPipeline.fromPretrained(MODEL_DIR, {
      compiler: engineCompiler,
      cacheDir,
      modes: ['original', 'S'],
      threads: 1,
    });
  });

  afterAll(async () => {
    await pipe?.close();
    if (cacheDir) rmSync(cacheDir, { recursive: true, force: true });
  });

  it('stores the plan and the step-cache split in the S manifest', async () => {
    const m = await pipe.manifest('S');
    expect(m.plan.length).toBeGreaterThan(0);
    expect(m.plan.every((e) => typeof e.error === 'number' && typeof e.gainMs === 'number')).toBe(true);
    expect(m.planSummary!.measuredError).toBeLessThanOrEqual(m.planSummary!.budget);
    expect(m.stepCache).toMatchObject({ warmupSteps: 1, maxConsecutive: 1, minPsnr: 30 });
    // Loading S calibrated its threshold: one of the candidates, or 0 when none keeps the images within minPsnr.
    const threshold = stepCacheOf(await pipe.engine('S'))!.settings.threshold;
    expect([0, ...THRESHOLD_CANDIDATES]).toContain(threshold);
    expect((await pipe.engine('S')).stepCache).toBeDefined();
    expect((await pipe.engine('original')).stepCache).toBeUndefined();
  });

  it('skips the tail on eligible steps only: warm-up first, at most maxConsecutive in a row', async () => {
    const cache = stepCacheOf(await pipe.engine('S'))!;
    const saved = cache.settings;
    try {
      cache.settings = { threshold: Number.POSITIVE_INFINITY, warmupSteps: 1, maxConsecutive: 2 };
      let before = { ...cache.stats };
      const skipped = await gen('S');
      // Steps 0 full (nothing cached), 1-2 cached, 3 full, 4-5 cached, 6 full, 7 cached.
      expect({ full: cache.stats.full - before.full, cached: cache.stats.cached - before.cached }).toEqual({
        full: 3,
        cached: 5,
      });

      cache.settings = { threshold: 0, warmupSteps: 1, maxConsecutive: 2 };
      before = { ...cache.stats };
      const full = await gen('S');
      expect({ full: cache.stats.full - before.full, cached: cache.stats.cached - before.cached }).toEqual({
        full: 8,
        cached: 0,
      });
      // Skipping changes the result, but the image stays close to the always-full one.
      expect(relativeChange(skipped.latents[0]!, full.latents[0]!)).toBeGreaterThan(0);
      expect(relativeChange(skipped.latents[0]!, full.latents[0]!)).toBeLessThan(0.5);
      // Same settings, same result: the per-sample state starts fresh for every generation.
      const again = await gen('S');
      expect(again.latents[0]).toEqual(full.latents[0]);
    } finally {
      cache.settings = saved;
    }
  });

  it("XL computes every step's modulation up front and matches original within 1e-4", async () => {
    const xl = await pipe.engine('XL');
    expect(xl.manifest.modulation).toBeDefined();
    expect(xl.modulation).toBeDefined();
    expect(xl.manifest.components.transformer.inputs.map((i) => i.name)).toContain('modulation');
    expect(xl.manifest.components.transformer.inputs.map((i) => i.name)).not.toContain('timestep');
    expect((await pipe.engine('original')).manifest.modulation).toBeUndefined();
    expect((await pipe.engine('S')).manifest.modulation).toBeUndefined();
    const ref = await gen('original');
    const out = await gen('XL');
    expect(relativeChange(out.latents[0]!, ref.latents[0]!)).toBeLessThan(1e-4);
    expect(relativeChange(out.floatImages[0]!, ref.floatImages[0]!)).toBeLessThan(1e-4);
  });

  it('XL: samples batched at different steps carry their own modulation rows and equal running alone', async () => {
    const request = (prompt: string, seed: number, steps: number, guidanceScale: number) => ({
      prompt,
      height: 64,
      width: 64,
      steps,
      guidanceScale,
      seed,
      maxSequenceLength: 32,
      mode: 'XL',
    });
    const a = request('a red cube on a blue sphere', 1, 6, 3.5);
    const b = request('a green cone', 2, 4, 5);
    // Alone.
    const [aloneA] = await pipe.prepare([a]);
    const [aloneB] = await pipe.prepare([b]);
    while (aloneA!.step < 6) await pipe.step([aloneA!]);
    while (aloneB!.step < 4) await pipe.step([aloneB!]);
    // Together: A runs 2 steps first, then both share every transformer run (A at step k+2 beside B at step k).
    const [sa, sb] = await pipe.prepare([a, b]);
    await pipe.step([sa!]);
    await pipe.step([sa!]);
    expect(sb!.modulation).toBeUndefined();
    while (sa!.step < 6 || sb!.step < 4) await pipe.step([sa!, sb!]);
    expect(sa!.modulation!.rows.length).toBe(6 * sa!.modulation!.width);
    expect(sb!.modulation!.rows.length).toBe(4 * sb!.modulation!.width);
    expect(relativeChange(sa!.latents, aloneA!.latents)).toBeLessThan(1e-5);
    expect(relativeChange(sb!.latents, aloneB!.latents)).toBeLessThan(1e-5);
  });

  it('reports unknown and unavailable modes with typed errors', async () => {
    await expect(pipe.engine('XXL')).rejects.toBeInstanceOf(UnknownModeError);
    await expect(gen('turbo', 1)).rejects.toThrow(/unknown mode "turbo"; available modes: original, XL, L, M, S/);
    expect(() => resolveModeFor('S', 'flux-tiny', ['original', 'XL'])).toThrow(ModeUnavailableError);
    expect(() => resolveModeFor('S', 'flux-tiny', ['original', 'XL'])).toThrow(
      /mode "S" is not available for model flux-tiny/,
    );
    expect(() => compileEngine(pipe.source.repo, { mode: 'L', cacheDir })).toThrow(PlanRequiredError);
  });
});
