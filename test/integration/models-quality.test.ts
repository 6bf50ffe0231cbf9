/**
 * `models` shows the mode benchmark's numbers (`bench/results/modes.json`: latency, PSNR/SSIM against original,
 * the planner's summary) for the served model, over real HTTP against the real pipeline (models/flux-tiny), server
 * on port 0; a missing result file gives nulls and the server keeps answering. After a generation in M, M's plan
 * also lists the engine's per-layer choices, the same as the planner's cached plan file.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { FLUX_TINY_DIR } from '../../src/config.ts';
import { planPath } from '../../src/pipeline/flux/elastic-plan.ts';
import { defaultCacheDir, openModelSource } from '../../src/pipeline/flux/engine-cache.ts';
import { GenerateImageDocument, JobDocument, ModelsDocument } from '../helpers/gql/graphql.ts';
import { REPO_ROOT } from '../helpers/paths.ts';
import { disposeLeftovers, eventually, gqlData, startTestServer } from '../helpers/test-server.ts';

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

/** One server for the tests that read the real result file (started by the first that needs it). */
let withResults: Promise<{ url: string }> | undefined;
const serverWithResults = () => (withResults ??= startTestServer({ modelBatch: 2, modesResults: RESULTS }));

describe('models: measured quality and plan', () => {
  it('shows the quality and plan of every mode of flux-tiny from the result file', async () => {
    const { url } = await serverWithResults();
    const { models } = await gqlData(url, ModelsDocument, {});
    const recorded = file.models['flux-tiny']?.modes;
    if (!recorded) throw new Error('modes.json has no flux-tiny');
    for (const mode of ['XL', 'L', 'M', 'S']) {
      const m = models.find((x) => x.mode === mode);
      const want = recorded[mode];
      if (!m || !want) throw new Error(`mode ${mode} missing`);
      expect(m.name).toBe('flux-tiny');
      expect(m.quality).toEqual({ psnr: want.psnr, ssim: want.ssim, reference: 'original', promptFollowing: null });
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

  it("lists M's per-layer plan after a generation in M, as the planner's cached plan holds it", async () => {
    const { url } = await serverWithResults();
    const { generateImage: r } = await gqlData(url, GenerateImageDocument, {
      input: { prompt: 'a lighthouse on a cliff at dawn', seed: 7, width: 64, height: 64, steps: 2, mode: 'M' },
    });
    if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
    await eventually(async () => {
      const { job } = await gqlData(url, JobDocument, { id: r.data.id });
      expect(job.__typename === 'QueryJobSuccess' && job.data.status).toBe('SUCCEEDED');
    });
    // The plan M was compiled from (written by the planner on first use; the server shares this process's cache).
    const planFile = JSON.parse(
      readFileSync(
        planPath(defaultCacheDir(), { compiler: engineCompiler, source: openModelSource(FLUX_TINY_DIR) }),
        'utf8',
      ),
    ) as { plans: Record<string, { entries: { layer: string; algorithm: string; error: number; gainMs: number }[] }> };
    const entries = planFile.plans.M?.entries ?? [];
    expect(entries.length).toBeGreaterThan(0);
    const counts = (list: { algorithm: string }[]) => {
      const out: Record<string, number> = {};
      for (const e of list) out[e.algorithm] = (out[e.algorithm] ?? 0) + 1;
      return out;
    };
    // Read at most every few seconds: poll until this generation's plan shows.
    const m = await eventually(async () => {
      const { models } = await gqlData(url, ModelsDocument, {});
      const found = models.find((x) => x.mode === 'M');
      expect(found?.plan?.layers.length).toBe(entries.length);
      return found;
    });
    const layers = m?.plan?.layers ?? [];
    expect(counts(layers)).toEqual(counts(entries));
    expect(layers).toEqual(
      entries.map((e) => ({ layer: e.layer, algorithm: e.algorithm, error: e.error, gainMs: e.gainMs })),
    );
    for (const l of layers) {
      // Diffusers module paths of the (fused) XL graph, e.g. `transformer_blocks.0.attn.to_qkv`.
      expect(l.layer).toMatch(/^[a-z_]+(\.(\d+|[a-z][a-z0-9_]*))*$/);
    }
    expect(layers.some((l) => /^transformer_blocks\.0\.attn\.to_q/.test(l.layer))).toBe(true);
    // Unplanned modes have no per-layer plan.
    const { models } = await gqlData(url, ModelsDocument, {});
    expect(models.find((x) => x.mode === 'XL')?.plan?.layers ?? []).toEqual([]);
  });

  it("shows the served model's grammar prompt-following rows, never another model's", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-modes-'));
    const row = (acc: number) => ({
      latencyMs: 900,
      psnr: 40,
      ssim: 0.99,
      promptAccuracy: { background: acc, color: acc, shape: acc / 2, position: acc / 4 },
      promptCount: 48,
    });
    const results = join(dir, 'modes.json');
    writeFileSync(
      results,
      JSON.stringify({
        format: 'fluxql-modes/1',
        machine: { cpu: 'test cpu', cores: 2 },
        models: {
          'flux-tiny': { quality: { size: 256, steps: 28, prompts: 48 }, modes: { S: row(0.5) } },
          'flux-mini': { quality: { size: 256, steps: 28, prompts: 48 }, modes: { S: row(1), L: row(1) } },
        },
      }),
    );
    const { url } = await startTestServer({ modelBatch: 2, modesResults: results });
    const { models } = await gqlData(url, ModelsDocument, {});
    const s = models.find((x) => x.mode === 'S');
    expect(s?.name).toBe('flux-tiny');
    expect(s?.quality?.promptFollowing).toEqual({
      background: 0.5,
      color: 0.5,
      shape: 0.25,
      position: 0.125,
      size: null,
      prompts: 48,
    });
    expect(models.find((x) => x.mode === 'L')?.quality).toBeNull();
    // Published rows are FLUX.1-dev's and say so.
    const published = s?.specs.filter((x) => x.origin === 'PUBLISHED') ?? [];
    expect(published.length).toBeGreaterThan(0);
    for (const p of published)
      expect(p.source).toMatch(/^FLUX\.1-dev \(12B\) as published, not measured on the served model/);
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
