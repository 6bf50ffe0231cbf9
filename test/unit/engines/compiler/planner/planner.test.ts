/**
 * The per-layer planner on a small graph (flux-tiny's XL transformer, real ORT runs for the errors). Layer times come
 * from a deterministic cost model (multiply-adds × a per-algorithm factor) so the comparisons do not depend on the
 * machine's timing noise; the errors are measured.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileTransformer } from '../../../../../engines/compiler/flux/transformer.ts';
import { type Algorithm, COMPRESSIONS, plannedPolicy } from '../../../../../engines/compiler/planner/algorithms.ts';
import { CalibrationGraph, type LinearShape } from '../../../../../engines/compiler/planner/measure.ts';
import {
  type Measurements,
  measureLayers,
  type PlannerInput,
  planModes,
} from '../../../../../engines/compiler/planner/plan.ts';
import { Session } from '../../../../../src/runtime/index.ts';
import { optimizePlan, planTime, uniformPlan } from '../../../../../src/shared/plan-optimize.ts';
import { relativeError } from '../../../../../src/shared/tensor-metrics.ts';
import { resolveMode } from '../../../../../src/shared/vocabulary/modes.ts';
import { type ModePlan, planChoices } from '../../../../../src/shared/vocabulary/plan-types.ts';
import { openComponentWeights, type WeightSource } from '../../../../../src/shared/weights/weight-source.ts';
import {
  fixtureTensor,
  fixtureTransformerFeeds,
  TRANSFORMER_DIR,
  transformerConfig,
} from '../../../../helpers/transformer-fixture.ts';

const config = transformerConfig;
const _t = fixtureTensor;
const XL = resolveMode('XL').transformer;

/** Multiply-adds × factor: int8 GEMMs cheapest, 4-bit block formats between (as measured on AVX512-VNNI CPUs). */
const FACTOR: Record<Algorithm, number> = {
  fp32: 1,
  'int8-dyn': 0.25,
  'int8-b128': 0.5,
  'int4-b32': 0.7,
  'int4-b128': 0.6,
};
const costModel = async (s: LinearShape, alg: Algorithm) =>
  s.tokens * s.inFeatures * s.outFeatures * FACTOR[alg] * 1e-6;

describe('per-layer planner (flux-tiny XL)', () => {
  let weights: WeightSource;
  let input: PlannerInput;
  let measured: Measurements;
  let plans: Record<string, ModePlan>;
  let mixed: CalibrationGraph;
  let ref: Float32Array;
  const budgets = { tight: 0.004, loose: 0.015 };

  beforeAll(async () => {
    weights = openComponentWeights(TRANSFORMER_DIR);
    input = {
      weights,
      config,
      graph: { ...XL },
      feeds: fixtureTransformerFeeds(),
      timing: { image: 16, text: 24 },
      costModel,
      threads: 1,
    };
    measured = await measureLayers(input);
    plans = await planModes(input, measured, budgets);
    mixed = await CalibrationGraph.create(weights, config, { ...XL }, COMPRESSIONS, 1);
    ref = await mixed.reference(input.feeds);
  });

  afterAll(async () => {
    await mixed?.close();
    weights?.close();
  });

  it('measures an error for every (layer, algorithm) that saves time, and none for fp32', () => {
    expect(measured.layers.map((l) => l.layer)).toContain('modulation');
    for (const l of measured.layers) {
      expect(l.options[0]).toMatchObject({ algorithm: 'fp32', error: 0 });
      for (const o of l.options.slice(1)) {
        expect(o.error).toBeGreaterThan(0);
        expect(o.timeMs).toBeLessThan(l.options[0]!.timeMs);
      }
    }
  });

  it('keeps every plan within its budget, in the gate graph and in the compiled engine graph', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-plan-'));
    try {
      const xl = compileTransformer(weights, config, dir, { fileName: 'xl.onnx', ...XL });
      const xlSession = await Session.create('xl', xl.modelPath, { threads: 1 });
      const fp = (await xlSession.run(input.feeds)).sample!.data as Float32Array;
      await xlSession.release();
      for (const [name, budget] of Object.entries(budgets)) {
        const plan = plans[name]!;
        expect(plan.entries.some((e) => e.algorithm !== 'fp32')).toBe(true);
        expect(plan.measuredError).toBeLessThanOrEqual(budget);
        const compiled = compileTransformer(weights, config, dir, {
          fileName: `${name}.onnx`,
          ...XL,
          linearPolicy: plannedPolicy(planChoices(plan)),
        });
        const s = await Session.create(name, compiled.modelPath, { threads: 1 });
        const out = (await s.run(input.feeds)).sample!.data as Float32Array;
        await s.release();
        expect(relativeError(out, fp)).toBeLessThanOrEqual(budget);
        expect(relativeError(out, fp)).toBeCloseTo(plan.measuredError, 5);
      }
      // A looser budget never makes the plan slower.
      expect(planTime(measured.layers, planChoices(plans.loose!))).toBeLessThanOrEqual(
        planTime(measured.layers, planChoices(plans.tight!)),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('beats every uniform plan of equal (measured) error', async () => {
    let strictlyBetter = 0;
    for (const alg of COMPRESSIONS) {
      const uniform = uniformPlan(measured.layers, alg);
      const uniformError = await mixed.planError(input.feeds, ref, uniform.choices);
      const plan = await planModes(input, measured, { equal: uniformError });
      const p = plan.equal!;
      expect(p.measuredError).toBeLessThanOrEqual(uniformError);
      const time = planTime(measured.layers, planChoices(p));
      expect(time).toBeLessThanOrEqual(uniform.timeMs + 1e-9);
      if (time < uniform.timeMs - 1e-9) strictlyBetter++;
    }
    expect(strictlyBetter).toBeGreaterThan(0);
  });

  it('records each choice with its own error and time gain', () => {
    const plan = plans.loose!;
    const byLayer = new Map(measured.layers.map((l) => [l.layer, l]));
    for (const e of plan.entries) {
      const options = byLayer.get(e.layer)!.options;
      const o = options.find((x) => x.algorithm === e.algorithm)!;
      expect(e.error).toBe(o.error);
      expect(e.gainMs).toBeCloseTo(options[0]!.timeMs - o.timeMs, 12);
    }
    expect(plan.gainMs).toBeCloseTo(
      plan.entries.reduce((a, e) => a + e.gainMs, 0),
      9,
    );
    expect(optimizePlan(measured.layers, 0).timeMs).toBeCloseTo(measured.fp32Ms, 9);
  });
});
