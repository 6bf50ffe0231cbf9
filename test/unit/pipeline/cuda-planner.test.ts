/** The CUDA engine's per-layer planner on synthetic calibration tables (engines/cuda PROTOCOL.md `calibrate`). */
import { describe, expect, it } from 'vitest';
import {
  type CudaCalibration,
  type CudaLayerCalibration,
  type CudaModePlan,
  cudaLayerChoices,
  cudaPlannedBudgets,
  cudaPlanRules,
  parseCudaCalibration,
  planCudaModes,
  tightenCudaPlans,
} from '../../../src/pipeline/cuda-planner.ts';

/** Deterministic values in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** A table like the engine's: errors spread over two decades, fp8 about 40 % faster, a few layers not measured. */
function table(n: number, seed: number): CudaCalibration {
  const r = rng(seed);
  const layers: CudaLayerCalibration[] = [];
  for (let i = 0; i < n; i++) {
    const ms = 0.05 + r();
    const measured = r() > 0.1;
    layers.push({
      name: `transformer/transformer_blocks.${i}.attn.to_q+to_k+to_v`,
      in: 3072,
      out: 9216,
      base: 'bf16',
      fp8: measured,
      rel_err_fp8: measured ? 10 ** (-4 + 2 * r()) : null,
      ms_bf16: ms,
      ms_fp8: measured ? ms * (0.5 + 0.2 * r()) : null,
      ...(measured ? {} : { skip: 'base type f32' }),
    });
  }
  return { layers, base_ms: 100, steps: 2 };
}

const errOf = (cal: CudaCalibration, names: readonly string[]) =>
  Math.sqrt(names.reduce((a, n) => a + cal.layers.find((l) => l.name === n)!.rel_err_fp8! ** 2, 0));

describe('planCudaModes', () => {
  const budgets = cudaPlannedBudgets();

  it('takes L, M, S budgets from the mode vocabulary, increasing', () => {
    expect(Object.keys(budgets)).toEqual(['L', 'M', 'S']);
    expect(budgets.L!).toBeLessThan(budgets.M!);
    expect(budgets.M!).toBeLessThan(budgets.S!);
  });

  it('respects every budget, nested or not, and reports predicted error and gain from the table', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const cal = table(60, seed);
      for (const nested of [true, false]) {
        const plans = planCudaModes(cal, budgets, { nested });
        for (const [mode, p] of Object.entries(plans)) {
          expect(p.mode).toBe(mode);
          expect(p.predictedError).toBeLessThanOrEqual(budgets[mode]! * (1 + 1e-12));
          expect(p.predictedError).toBeCloseTo(errOf(cal, p.fp8Layers), 12);
          const gain = p.fp8Layers.reduce((a, n) => {
            const l = cal.layers.find((x) => x.name === n)!;
            return a + l.ms_bf16 - l.ms_fp8!;
          }, 0);
          expect(p.gainMs).toBeCloseTo(gain, 12);
          expect(p.predictedStepMs).toBeCloseTo(cal.base_ms - gain, 12);
          expect(p.counts).toEqual({
            bf16: cal.layers.length - p.fp8Layers.length,
            fp8: p.fp8Layers.length,
            fp8row: 0,
          });
          expect(p.fp8rowLayers).toEqual([]);
          expect(p.fp8Layers.length).toBeGreaterThan(0);
        }
      }
    }
  });

  it('nests L ⊆ M ⊆ S, with gains that never fall as the budget grows', () => {
    for (const seed of [7, 8, 9]) {
      const plans = planCudaModes(table(80, seed), budgets);
      const [l, m, s] = [plans.L!, plans.M!, plans.S!];
      for (const n of l.fp8Layers) expect(m.fp8Layers).toContain(n);
      for (const n of m.fp8Layers) expect(s.fp8Layers).toContain(n);
      expect(l.gainMs).toBeLessThanOrEqual(m.gainMs);
      expect(m.gainMs).toBeLessThanOrEqual(s.gainMs);
    }
  });

  it('zero budget: no fp8 layer, the bf16 preset as rules', () => {
    const p = planCudaModes(table(30, 11), { L: 0 }).L!;
    expect(p.fp8Layers).toEqual([]);
    expect(p.rules).toBe('bf16');
    expect(p.predictedError).toBe(0);
    expect(p.gainMs).toBe(0);
  });

  it('a budget above every error sum: every eligible layer fp8, and never an ineligible one', () => {
    const cal = table(40, 12);
    // Not eligible although measured: fp8 slower than bf16, a non-finite error.
    cal.layers[0]!.ms_fp8 = cal.layers[0]!.ms_bf16 * 1.1;
    cal.layers[1]!.fp8 = true;
    cal.layers[1]!.rel_err_fp8 = Number.POSITIVE_INFINITY;
    cal.layers[1]!.ms_fp8 = 0.01;
    const p = planCudaModes(cal, { S: 10 }).S!;
    const eligible = cal.layers
      .filter((l, i) => i > 1 && l.fp8 && l.rel_err_fp8 !== null && l.ms_fp8! < l.ms_bf16)
      .map((l) => l.name);
    expect(p.fp8Layers).toEqual(eligible);
    expect(cudaLayerChoices(cal)[0]!.options).toHaveLength(1);
  });

  it('is as fast as the best subset by brute force (up to the grid’s conservative rounding)', () => {
    for (const seed of [21, 22, 23, 24]) {
      const cal = table(10, seed);
      const budget = 0.012;
      const p = planCudaModes(cal, { M: budget }, { nested: false }).M!;
      const n = cal.layers.length;
      // The optimiser rounds every squared error up to a 1/4000 grid of budget²: n layers lose at most n units.
      const tight = budget * Math.sqrt(1 - n / 4000);
      let best = 0;
      for (let mask = 0; mask < 1 << n; mask++) {
        const set = cal.layers.filter((l, i) => mask & (1 << i) && l.fp8);
        if (set.length !== [...Array(n).keys()].filter((i) => mask & (1 << i)).length) continue;
        if (
          errOf(
            cal,
            set.map((l) => l.name),
          ) > tight
        )
          continue;
        best = Math.max(
          best,
          set.reduce((a, l) => a + l.ms_bf16 - l.ms_fp8!, 0),
        );
      }
      expect(p.gainMs).toBeGreaterThanOrEqual(best - 1e-9);
    }
  });
});

/** {@link table} with fp8row measured on most layers: a third to a half of the fp8 error, between bf16 and fp8 in time. */
function rowTable(n: number, seed: number): CudaCalibration {
  const cal = table(n, seed);
  const r = rng(seed + 1000);
  for (const l of cal.layers) {
    if (r() < 0.15) continue;
    l.fp8row = true;
    l.rel_err_fp8row = (l.rel_err_fp8 ?? 10 ** (-4 + 2 * r())) * (0.33 + 0.17 * r());
    l.ms_fp8row = l.ms_bf16 * (0.65 + 0.2 * r());
  }
  return cal;
}

/** A plan's layer → algorithm. */
const assignment = (p: CudaModePlan) =>
  new Map<string, string>([
    ...p.fp8Layers.map((n) => [n, 'fp8'] as const),
    ...p.fp8rowLayers.map((n) => [n, 'fp8row'] as const),
  ]);

/** Solo error and time of `name` under `alg`. */
function option(cal: CudaCalibration, name: string, alg: string) {
  const l = cal.layers.find((x) => x.name === name)!;
  return alg === 'fp8' ? { e: l.rel_err_fp8!, ms: l.ms_fp8! } : { e: l.rel_err_fp8row!, ms: l.ms_fp8row! };
}

describe('planCudaModes with fp8row measured (CUDA_PLANNER_FP8ROW)', () => {
  const budgets = cudaPlannedBudgets();

  it('picks at most one algorithm per layer, within every budget, some layers fp8row, rules per algorithm', () => {
    let rows = 0;
    for (const seed of [41, 42, 43]) {
      const cal = rowTable(80, seed);
      for (const nested of [true, false]) {
        const plans = planCudaModes(cal, budgets, { nested });
        for (const [mode, p] of Object.entries(plans)) {
          const a = assignment(p);
          expect(a.size).toBe(p.fp8Layers.length + p.fp8rowLayers.length); // no layer in both
          expect(p.predictedError).toBeLessThanOrEqual(budgets[mode]! * (1 + 1e-12));
          const errs = [...a].map(([n, alg]) => option(cal, n, alg).e);
          expect(p.predictedError).toBeCloseTo(Math.sqrt(errs.reduce((x, e) => x + e * e, 0)), 12);
          const gain = [...a].reduce(
            (x, [n, alg]) => x + cal.layers.find((l) => l.name === n)!.ms_bf16 - option(cal, n, alg).ms,
            0,
          );
          expect(p.gainMs).toBeCloseTo(gain, 12);
          expect(p.counts).toEqual({
            bf16: cal.layers.length - a.size,
            fp8: p.fp8Layers.length,
            fp8row: p.fp8rowLayers.length,
          });
          for (const n of p.fp8rowLayers) {
            expect(cal.layers.find((l) => l.name === n)!.fp8row).toBe(true);
            expect(p.rules.split(';')).toContain(`${n}=fp8row`);
          }
          for (const n of p.fp8Layers) expect(p.rules.split(';')).toContain(`${n}=fp8`);
          expect(p.rules.split(';')).toHaveLength(a.size);
          rows += p.fp8rowLayers.length;
        }
      }
    }
    expect(rows).toBeGreaterThan(0);
  });

  it('nests the quantised layers L ⊆ M ⊆ S (a kept layer may move to a faster algorithm, never back to bf16)', () => {
    for (const seed of [44, 45, 46]) {
      const cal = rowTable(80, seed);
      const plans = planCudaModes(cal, budgets);
      const [l, m, s] = [assignment(plans.L!), assignment(plans.M!), assignment(plans.S!)];
      for (const n of l.keys()) expect(m.has(n)).toBe(true);
      for (const n of m.keys()) expect(s.has(n)).toBe(true);
      // A move is only ever to a faster algorithm.
      for (const [small, big] of [
        [l, m],
        [m, s],
      ] as const)
        for (const [n, alg] of small)
          if (big.get(n) !== alg) expect(option(cal, n, big.get(n)!).ms).toBeLessThan(option(cal, n, alg).ms);
      expect(plans.L!.gainMs).toBeLessThanOrEqual(plans.M!.gainMs);
      expect(plans.M!.gainMs).toBeLessThanOrEqual(plans.S!.gainMs);
    }
  });

  it('moves a kept fp8row layer to fp8 when the larger budget affords it', () => {
    const layer = (name: string, e8: number, eRow: number): CudaLayerCalibration => ({
      name,
      in: 1,
      out: 1,
      base: 'bf16',
      fp8: true,
      rel_err_fp8: e8,
      ms_bf16: 1,
      ms_fp8: 0.5,
      fp8row: true,
      rel_err_fp8row: eRow,
      ms_fp8row: 0.6,
    });
    const cal: CudaCalibration = { layers: [layer('transformer/a', 0.02, 0.005)], base_ms: 10, steps: 2 };
    const plans = planCudaModes(cal, { L: 0.01, S: 0.03 });
    expect(plans.L!.rules).toBe('transformer/a=fp8row');
    expect(plans.S!.rules).toBe('transformer/a=fp8');
    expect(plans.S!.gainMs).toBeCloseTo(0.5, 12);
  });

  it('is as fast as the best assignment by brute force over bf16, fp8, fp8row (up to the grid’s rounding)', () => {
    for (const seed of [51, 52, 53]) {
      const cal = rowTable(7, seed);
      const budget = 0.012;
      const p = planCudaModes(cal, { M: budget }, { nested: false }).M!;
      const n = cal.layers.length;
      const tight = budget * Math.sqrt(1 - n / 4000);
      const opts = cal.layers.map((l) => [
        { e: 0, gain: 0 },
        ...(l.fp8 ? [{ e: l.rel_err_fp8!, gain: l.ms_bf16 - l.ms_fp8! }] : []),
        ...(l.fp8row ? [{ e: l.rel_err_fp8row!, gain: l.ms_bf16 - l.ms_fp8row! }] : []),
      ]);
      let best = 0;
      const walk = (i: number, e2: number, gain: number) => {
        if (Math.sqrt(e2) > tight) return;
        if (i === n) {
          best = Math.max(best, gain);
          return;
        }
        for (const o of opts[i]!) walk(i + 1, e2 + o.e * o.e, gain + o.gain);
      };
      walk(0, 0, 0);
      expect(p.gainMs).toBeGreaterThanOrEqual(best - 1e-9);
    }
  });

  it('offers fp8row only where measured, finite and faster than bf16', () => {
    const cal = rowTable(6, 61);
    cal.layers[0]!.fp8row = true;
    cal.layers[0]!.rel_err_fp8row = 0.001;
    cal.layers[0]!.ms_fp8row = cal.layers[0]!.ms_bf16 * 1.05;
    cal.layers[1]!.fp8row = true;
    cal.layers[1]!.rel_err_fp8row = Number.NaN;
    cal.layers[1]!.ms_fp8row = 0.001;
    const algs = cudaLayerChoices(cal).map((c) => c.options.map((o) => o.algorithm));
    expect(algs[0]).not.toContain('fp8row');
    expect(algs[1]).not.toContain('fp8row');
    expect(algs.some((a) => a.includes('fp8row'))).toBe(true);
  });
});

describe('cudaPlanRules', () => {
  it('exact names joined as load’s plans rules', () => {
    expect(cudaPlanRules(['transformer/a.b+c', 'transformer/d'])).toBe('transformer/a.b+c=fp8;transformer/d=fp8');
    expect(cudaPlanRules([])).toBe('bf16');
    expect(() => cudaPlanRules(['transformer/x*'])).toThrow(/rule character/);
    expect(cudaPlanRules(['transformer/a', { name: 'transformer/b', algorithm: 'fp8row' }])).toBe(
      'transformer/a=fp8;transformer/b=fp8row',
    );
  });
});

describe('parseCudaCalibration', () => {
  const header = {
    op: 'calibrated',
    layers: [
      {
        name: 'transformer/x_embedder',
        in: 64,
        out: 3072,
        base: 'bf16',
        fp8: true,
        rel_err_fp8: 0.002,
        ms_bf16: 0.1,
        ms_fp8: 0.07,
      },
      {
        name: 'transformer/proj_out',
        in: 3072,
        out: 64,
        base: 'f32',
        fp8: false,
        rel_err_fp8: null,
        ms_bf16: 0.1,
        ms_fp8: null,
        skip: 'base type f32',
      },
    ],
    verified: [],
    base_ms: 12.5,
    steps: 2,
    ms: 3000,
  };

  it('reads the engine’s answer', () => {
    const cal = parseCudaCalibration(header);
    expect(cal.layers.map((l) => [l.name, l.fp8, l.rel_err_fp8])).toEqual([
      ['transformer/x_embedder', true, 0.002],
      ['transformer/proj_out', false, null],
    ]);
    expect(cal.base_ms).toBe(12.5);
    expect(cal.layers[1]!.skip).toBe('base type f32');
    expect(cal.layers[0]).not.toHaveProperty('fp8row');
  });

  it('reads fp8row fields when measured, and nothing of them when not', () => {
    const [a, b] = header.layers;
    const cal = parseCudaCalibration({
      ...header,
      layers: [
        { ...a, fp8row: true, rel_err_fp8row: 0.0007, ms_fp8row: 0.08 },
        { ...b, fp8row: false, rel_err_fp8row: null, ms_fp8row: null, skip_fp8row: 'base type f32' },
      ],
    });
    expect(cal.layers[0]).toMatchObject({ fp8row: true, rel_err_fp8row: 0.0007, ms_fp8row: 0.08 });
    expect(cal.layers[1]).not.toHaveProperty('fp8row');
    expect(cal.layers[1]!.skip_fp8row).toBe('base type f32');
  });

  it('refuses duplicate layers and missing fields', () => {
    expect(() => parseCudaCalibration({ ...header, layers: [header.layers[0], header.layers[0]] })).toThrow(/twice/);
    expect(() => parseCudaCalibration({ ...header, base_ms: null })).toThrow(/base_ms/);
    expect(() => parseCudaCalibration({ ...header, layers: [{ ...header.layers[0], ms_bf16: 'x' }] })).toThrow(
      /ms_bf16/,
    );
  });
});

describe('tightenCudaPlans', () => {
  const budgets = cudaPlannedBudgets();

  it('tightens a mode whose measured error is over budget until it fits', async () => {
    const cal = table(60, 31);
    // Errors that add coherently (the plain sum: worse than the root-sum-square prediction).
    const coherent = (rules: string) =>
      rules === 'bf16'
        ? 0
        : rules.split(';').reduce((a, r) => a + cal.layers.find((l) => `${l.name}=fp8` === r)!.rel_err_fp8!, 0);
    let calls = 0;
    const plans = await tightenCudaPlans(cal, budgets, async (rules) => {
      calls++;
      return Object.fromEntries(Object.entries(rules).map(([m, r]) => [m, coherent(r)]));
    });
    expect(calls).toBeGreaterThan(1);
    for (const [mode, p] of Object.entries(plans)) {
      expect(p.measuredError).toBeCloseTo(coherent(p.rules), 12);
      expect(p.measuredError!).toBeLessThanOrEqual(budgets[mode]!);
      expect(p.fp8Layers.length).toBeGreaterThan(0);
    }
    for (const n of plans.L!.fp8Layers) expect(plans.S!.fp8Layers).toContain(n);
  });

  it('falls back to no fp8 layer when every plan measures over budget', async () => {
    const plans = await tightenCudaPlans(table(20, 32), budgets, async (rules) =>
      Object.fromEntries(Object.keys(rules).map((m) => [m, 1])),
    );
    for (const p of Object.values(plans)) {
      expect(p.fp8Layers).toEqual([]);
      expect(p.measuredError).toBe(0);
    }
  });

  it('keeps a plan that measures within budget after one check', async () => {
    let calls = 0;
    const plans = await tightenCudaPlans(table(20, 33), budgets, async (rules) => {
      calls++;
      return Object.fromEntries(Object.keys(rules).map((m) => [m, 0]));
    });
    expect(calls).toBe(1);
    expect(plans.S!.fp8Layers.length).toBeGreaterThan(0);
  });
});
