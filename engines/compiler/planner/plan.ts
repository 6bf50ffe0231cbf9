/**
 * @file The per-layer planner: measure what each (layer, algorithm) costs in error and saves in time, then choose one
 * algorithm per layer under each mode's error budget (`src/shared/plan-optimize.ts`, shared with the CUDA engine's
 * planner `src/pipeline/cuda-planner.ts`), and check the chosen plan's real error.
 *
 * Steps, for the XL graph of one model:
 * 1. time every distinct Linear shape under every algorithm at the benchmark token counts (`measure.ts`);
 *    an algorithm that saves nothing on a layer is never measured for error there (it can never be chosen);
 * 2. for each remaining (layer, algorithm), the relative output error it causes alone, on the calibration feeds;
 * 3. per budget: the fastest plan with predicted error ≤ budget; its error is then measured with a gate graph
 *    holding every algorithm, and when it exceeds the budget the budget given to the optimiser is tightened
 *    (× budget / measured · 0.95) and the plan redone, up to 4 times. The uniform plans (one algorithm on every
 *    layer where it saves time) are measured too; the fastest candidate within budget wins, all-fp32 is the fallback.
 */

import { type LayerChoices, optimizePlan, planTime, uniformPlan } from '../../../src/shared/plan-optimize.ts';
import type { ModePlan, PlanEntry } from '../../../src/shared/vocabulary/plan-types.ts';
import type { FluxTransformerConfig } from '../../../src/shared/vocabulary/transformer-config.ts';
import type { TransformerGraphOptions } from '../flux/transformer.ts';
import { buildTransformerGraph } from '../flux/transformer.ts';
import { GraphBuilder } from '../onnx/graph-builder.ts';
import type { WeightReader } from '../onnx/nn.ts';
import { type Algorithm, COMPRESSIONS } from './algorithms.ts';
import { CalibrationGraph, type LinearShape, type TransformerFeeds, timeLinear, tokensOf } from './measure.ts';

/** Prices a Linear shape under an algorithm (ms); {@link timeLinear} by default. */
export type CostModel = (shape: LinearShape, algorithm: Algorithm) => Promise<number>;

/** What the planner needs. */
export interface PlannerInput {
  weights: WeightReader;
  config: FluxTransformerConfig;
  /** The graph the plan applies to (the XL switches). */
  graph: TransformerGraphOptions;
  /** Calibration batch for the full transformer graph. */
  feeds: TransformerFeeds;
  /** Token counts (per sample) the latency model prices layers at. */
  timing: { image: number; text: number };
  algorithms?: readonly Algorithm[];
  costModel?: CostModel;
  threads?: number;
  onLog?: (message: string) => void;
}

/** Per-layer measurements shared by every mode's plan. */
export interface Measurements {
  layers: LayerChoices[];
  /** fp32 time of every layer summed (ms per forward at the timing token counts). */
  fp32Ms: number;
  calibration: Record<string, number | string>;
}

/** Measures time and error of every (layer, algorithm); see the file header. */
export async function measureLayers(input: PlannerInput): Promise<Measurements> {
  const algorithms = input.algorithms ?? COMPRESSIONS;
  const log = input.onLog ?? (() => {});
  const cost: CostModel = input.costModel ?? ((shape, alg) => timeLinear(shape, alg, { threads: input.threads }));

  // The layer list and shapes, from a build whose policy only records (no weights are transposed or stored).
  const probe = { layers: [] as string[], shapes: [] as { inFeatures: number; outFeatures: number }[] };
  buildTransformerGraph(new GraphBuilder({ name: 'layer_probe' }), input.weights, input.config, {
    ...input.graph,
    linearPolicy: (_b, x, layer) => {
      probe.layers.push(layer.name);
      probe.shapes.push({ inFeatures: layer.weights.inFeatures, outFeatures: layer.weights.outFeatures });
      return x;
    },
  });
  const { layers, shapes } = probe;

  // 1. times per distinct shape.
  const times = new Map<string, number>();
  const timeOf = async (shape: LinearShape, alg: Algorithm) => {
    const key = `${shape.tokens}x${shape.inFeatures}x${shape.outFeatures}|${alg}`;
    let t = times.get(key);
    if (t === undefined) {
      t = await cost(shape, alg);
      times.set(key, t);
    }
    return t;
  };
  const choices: LayerChoices[] = [];
  let fp32Ms = 0;
  for (const [i, name] of layers.entries()) {
    const shape = { tokens: tokensOf(name, input.timing.image, input.timing.text), ...shapes[i]! };
    const base = await timeOf(shape, 'fp32');
    fp32Ms += base;
    const options = [{ algorithm: 'fp32', error: 0, timeMs: base }];
    for (const alg of algorithms) {
      const t = await timeOf(shape, alg);
      if (t < base) options.push({ algorithm: alg, error: Number.NaN, timeMs: t });
    }
    choices.push({ layer: name, options });
  }
  log(`planner: ${layers.length} layers, ${times.size} timings, fp32 Linear time ${fp32Ms.toFixed(1)} ms/forward`);

  // 2. errors, one calibration graph per algorithm (one-hot gates).
  for (const alg of algorithms) {
    const todo = choices.flatMap((c, i) => (c.options.some((o) => o.algorithm === alg) ? [i] : []));
    if (todo.length === 0) continue;
    const graph = await CalibrationGraph.create(input.weights, input.config, input.graph, [alg], input.threads);
    try {
      const ref = await graph.reference(input.feeds);
      for (const i of todo) {
        const o = choices[i]!.options.find((x) => x.algorithm === alg)!;
        o.error = await graph.layerError(input.feeds, ref, i, alg);
      }
    } finally {
      await graph.close();
    }
    log(`planner: measured ${todo.length} layers under ${alg}`);
  }
  for (const c of choices) c.options = c.options.filter((o) => Number.isFinite(o.error));
  const batch = input.feeds.timestep?.dims[0] ?? 1;
  return {
    layers: choices,
    fp32Ms,
    calibration: {
      samples: batch,
      imageTokens: input.timing.image,
      textTokens: input.timing.text,
      algorithms: algorithms.join(','),
      threads: input.threads ?? 'default',
    },
  };
}

/** Plans every budget of `budgets` (mode → relative error) from one set of measurements, checking real errors. */
export async function planModes(
  input: PlannerInput,
  measurements: Measurements,
  budgets: Readonly<Record<string, number>>,
): Promise<Record<string, ModePlan>> {
  const algorithms = input.algorithms ?? COMPRESSIONS;
  // One gate graph with every algorithm measures mixed plans exactly.
  const mixed = await CalibrationGraph.create(input.weights, input.config, input.graph, algorithms, input.threads);
  const plans: Record<string, ModePlan> = {};
  try {
    const ref = await mixed.reference(input.feeds);
    // Uniform plans (one algorithm everywhere it saves time) are candidates too: the root-sum-square model can be
    // pessimistic for them when their errors partly cancel, and the chosen plan must never lose to one.
    const uniforms = await Promise.all(
      algorithms.map(async (alg) => {
        const u = uniformPlan(measurements.layers, alg);
        return {
          choices: u.choices,
          predicted: u.predictedError,
          measured: await mixed.planError(input.feeds, ref, u.choices),
        };
      }),
    );
    for (const [mode, budget] of Object.entries(budgets)) {
      const candidates = uniforms.filter((u) => u.measured <= budget);
      let target = budget;
      for (let attempt = 0; attempt < 4; attempt++) {
        const plan = optimizePlan(measurements.layers, target);
        const measured = await mixed.planError(input.feeds, ref, plan.choices);
        input.onLog?.(
          `planner: ${mode} target ${target.toExponential(2)} predicted ${plan.predictedError.toExponential(2)} measured ${measured.toExponential(2)}`,
        );
        if (measured <= budget) {
          candidates.push({ choices: plan.choices, predicted: plan.predictedError, measured });
          break;
        }
        target *= (budget / measured) * 0.95;
      }
      const time = (c: { choices: Record<string, string> }) => planTime(measurements.layers, c.choices);
      const best = candidates.reduce<(typeof candidates)[number] | undefined>(
        (a, c) => (!a || time(c) < time(a) ? c : a),
        undefined,
      );
      plans[mode] = toModePlan(mode, budget, measurements, best ?? { choices: {}, predicted: 0, measured: 0 });
    }
  } finally {
    await mixed.close();
  }
  return plans;
}

function toModePlan(
  mode: string,
  budget: number,
  m: Measurements,
  best: { choices: Record<string, string>; predicted: number; measured: number },
): ModePlan {
  const entries: PlanEntry[] = m.layers.map((l) => {
    const alg = best.choices[l.layer] ?? 'fp32';
    const fp = l.options.find((o) => o.algorithm === 'fp32')!;
    const o = l.options.find((x) => x.algorithm === alg) ?? fp;
    return { layer: l.layer, algorithm: o.algorithm, error: o.error, gainMs: fp.timeMs - o.timeMs };
  });
  return {
    mode,
    budget,
    entries,
    predictedError: best.predicted,
    measuredError: best.measured,
    gainMs: entries.reduce((a, e) => a + e.gainMs, 0),
    calibration: { ...m.calibration, fp32LinearMs: Number(m.fp32Ms.toFixed(3)) },
  };
}
