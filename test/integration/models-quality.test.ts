/**
 * `models` shows the mode benchmark's numbers (`bench/results/modes.json`: latency, PSNR/SSIM against original,
 * the planner's summary) for the served model, over real HTTP against the real pipeline (models/flux-tiny), server
 * on port 0; a missing result file gives nulls and the server keeps answering.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/paths.ts';
import { ModelsDocument } from '../utils/gql/graphql.ts';
import { disposeLeftovers, gqlData, startTestServer } from '../utils/test-server.ts';

afterAll(disposeLeftovers);

interface FileMode {
  latencyMs: number;
  psnr: number;
  ssim: number;
  plan: { budget: number; measuredError: number; algorithms: Record<string, number> } | null;
  stepCache: { threshold: number; fullSteps: number; cachedSteps: number } | null;
}

const RESULTS = join(REPO_ROOT, 'bench/results/modes.json');
const file = JSON.parse(readFileSync(RESULTS, 'utf8')) as {
  models: Record<string, { modes: Record<string, FileMode> }>;
};

describe('models: measured quality and plan', () => {
  it('shows the quality and plan of every mode of flux-tiny from the result file', async () => {
    const { url } = await startTestServer({ modelBatch: 2, modesResults: RESULTS });
    const { models } = await gqlData(url, ModelsDocument, {});
    const recorded = file.models['flux-tiny']?.modes;
    if (!recorded) throw new Error('modes.json has no flux-tiny');
    for (const mode of ['XL', 'L', 'M', 'S']) {
      const m = models.find((x) => x.mode === mode);
      const want = recorded[mode];
      if (!m || !want) throw new Error(`mode ${mode} missing`);
      expect(m.name).toBe('flux-tiny');
      expect(m.quality).toEqual({ psnr: want.psnr, ssim: want.ssim, reference: 'original' });
      const bench = m.specs.find((s) => s.origin === 'BENCHMARK');
      expect(bench?.latencySeconds).toBeCloseTo(want.latencyMs / 1000, 12);
      if (!want.plan && !want.stepCache) {
        expect(m.plan).toBeNull();
        continue;
      }
      expect(m.plan?.errorBudget ?? null).toBe(want.plan?.budget ?? null);
      expect(m.plan?.measuredError ?? null).toBe(want.plan?.measuredError ?? null);
      const algorithms = Object.fromEntries((m.plan?.algorithms ?? []).map((a) => [a.algorithm, a.layers]));
      expect(algorithms).toEqual(want.plan?.algorithms ?? {});
      expect(m.plan?.stepCache ?? null).toEqual(want.stepCache);
    }
    // The planned modes of the file do have plans; S has step caching.
    expect(models.find((x) => x.mode === 'L')?.plan).not.toBeNull();
    expect(models.find((x) => x.mode === 'S')?.plan?.stepCache).not.toBeNull();
    const original = models.find((x) => x.mode === 'original');
    expect(original?.plan).toBeNull();
    expect(original?.quality?.reference).toBe('original');
  });

  it('gives nulls when the result file is missing and still answers', async () => {
    const { url } = await startTestServer({ modelBatch: 2, modesResults: join(REPO_ROOT, 'bench/results/nope.json') });
    const { models } = await gqlData(url, ModelsDocument, {});
    expect(models.length).toBeGreaterThan(1);
    for (const m of models) {
      expect(m.quality).toBeNull();
      expect(m.plan).toBeNull();
      expect(m.specs.some((s) => s.origin === 'BENCHMARK')).toBe(false);
      expect(m.specs.some((s) => s.origin === 'PUBLISHED')).toBe(true);
    }
  });
});
