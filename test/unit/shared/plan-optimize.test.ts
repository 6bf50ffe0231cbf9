/** The per-layer plan optimiser (multiple-choice knapsack under a root-sum-square error budget). */
import { describe, expect, it } from 'vitest';
import {
  combineErrors,
  type LayerChoices,
  optimizePlan,
  planTime,
  uniformPlan,
} from '../../../src/shared/plan-optimize.ts';

/** Deterministic values in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Random layers whose squared errors are whole multiples of 1/100, so a 100-bin grid over budget 1 is exact. */
function randomLayers(n: number, seed: number): LayerChoices[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const base = 1 + 9 * r();
    return {
      layer: `layer${i}`,
      options: [
        { algorithm: 'fp32', error: 0, timeMs: base },
        { algorithm: 'int8', error: Math.sqrt((1 + Math.floor(20 * r())) / 100), timeMs: base * (0.2 + 0.5 * r()) },
        { algorithm: 'int4', error: Math.sqrt((1 + Math.floor(40 * r())) / 100), timeMs: base * (0.1 + 0.5 * r()) },
      ],
    };
  });
}

/** Exhaustive search over every plan. */
function bruteForce(layers: LayerChoices[], budget: number): number {
  let best = Number.POSITIVE_INFINITY;
  const walk = (i: number, sq: number, t: number) => {
    if (sq > budget * budget + 1e-12) return;
    if (i === layers.length) {
      best = Math.min(best, t);
      return;
    }
    for (const o of layers[i]!.options) walk(i + 1, sq + o.error * o.error, t + o.timeMs);
  };
  walk(0, 0, 0);
  return best;
}

describe('optimizePlan', () => {
  it('keeps every layer in fp32 under a zero budget and takes the fastest option under an unlimited one', () => {
    const layers = randomLayers(6, 1);
    const none = optimizePlan(layers, 0);
    expect(Object.values(none.choices).every((a) => a === 'fp32')).toBe(true);
    expect(none.predictedError).toBe(0);
    const all = optimizePlan(layers, 100);
    for (const l of layers) {
      const fastest = l.options.reduce((a, b) => (b.timeMs < a.timeMs ? b : a));
      expect(all.choices[l.layer]).toBe(fastest.algorithm);
    }
  });

  it('finds the exhaustive-search optimum and respects the budget', () => {
    for (let seed = 1; seed <= 8; seed++) {
      const layers = randomLayers(7, seed);
      for (const budget of [0.3, 0.6, 1]) {
        // One bin per 1/100 of squared error: the grid is exact for these layers.
        const plan = optimizePlan(layers, budget, Math.round(100 * budget * budget));
        expect(plan.predictedError).toBeLessThanOrEqual(budget + 1e-9);
        expect(plan.timeMs).toBeCloseTo(planTime(layers, plan.choices), 9);
        expect(plan.timeMs).toBeCloseTo(bruteForce(layers, budget), 6);
      }
    }
  });

  it('beats or equals every uniform plan whose predicted error fits the same budget', () => {
    const layers = randomLayers(12, 42);
    for (const alg of ['int8', 'int4']) {
      const uniform = uniformPlan(layers, alg);
      const plan = optimizePlan(layers, uniform.predictedError);
      expect(plan.predictedError).toBeLessThanOrEqual(uniform.predictedError + 1e-9);
      expect(plan.timeMs).toBeLessThanOrEqual(uniform.timeMs + 1e-9);
    }
  });

  it('combines errors as the root of summed squares and refuses layers without a zero-error option', () => {
    expect(combineErrors([0.03, 0.04])).toBeCloseTo(0.05, 12);
    expect(() => optimizePlan([{ layer: 'x', options: [{ algorithm: 'int8', error: 0.1, timeMs: 1 }] }], 1)).toThrow(
      /layer x has no zero-error option/,
    );
  });
});
