/**
 * @file Choosing one algorithm per layer: a multiple-choice knapsack. Each layer offers options (algorithm, the
 * output error it causes alone, its time); pick one per layer minimising the summed time while the predicted error of
 * the whole plan stays under the budget.
 *
 * Error model: errors of different layers are treated as independent, so their squares add,
 * `E(plan) ≈ sqrt(Σᵢ eᵢ²)` (quantisation noise of different layers is uncorrelated; the planner afterwards measures
 * the real error of the chosen plan and tightens the budget when the model was optimistic, see
 * `engines/compiler/planner/plan.ts`; the CUDA engine's planner `src/pipeline/cuda-planner.ts` uses the same model).
 * Pure: shared by the ONNX compiler's planner and the CUDA engine's (the pipeline may not import the compiler).
 *
 * Solved exactly on a grid: the squared budget is cut into `bins` units, each option costs `ceil(e² / unit)` units
 * (rounding up, less a float-noise epsilon, keeps the prediction conservative), and a DP over layers × units finds the fastest plan. 69 layers ×
 * 5 options × 4000 units is about a million steps.
 */

/** One way to run one layer. */
export interface LayerOption {
  algorithm: string;
  /** Relative output error this option causes when it is the only change (0 for `fp32`). */
  error: number;
  /** Time of the layer with this option (ms; any unit, consistent across options). */
  timeMs: number;
}

/** A layer and its options; the first option with error 0 is the always-feasible baseline. */
export interface LayerChoices {
  layer: string;
  options: LayerOption[];
}

/** What {@link optimizePlan} chose. */
export interface OptimizedPlan {
  /** Chosen algorithm per layer. */
  choices: Record<string, string>;
  /** Predicted error `sqrt(Σ eᵢ²)` of the chosen options. */
  predictedError: number;
  /** Summed time of the chosen options. */
  timeMs: number;
}

/** Predicted error of independent per-layer errors: root of the summed squares. */
export function combineErrors(errors: readonly number[]): number {
  return Math.sqrt(errors.reduce((a, e) => a + e * e, 0));
}

/**
 * The fastest plan whose predicted error is at most `budget`.
 * @throws Error when a layer has no zero-error option (the budget could be unreachable).
 */
export function optimizePlan(layers: readonly LayerChoices[], budget: number, bins = 4000): OptimizedPlan {
  for (const l of layers) {
    if (!l.options.some((o) => o.error === 0))
      throw new Error(`optimizePlan: layer ${l.layer} has no zero-error option`);
  }
  const unit = budget > 0 ? (budget * budget) / bins : Number.POSITIVE_INFINITY;
  const cost = (o: LayerOption) =>
    o.error === 0 ? 0 : budget > 0 ? Math.ceil((o.error * o.error) / unit - 1e-9) : bins + 1;
  // best[j]: least time of the layers so far using at most j units; pick[l][j]: option chosen for layer l at j.
  let best = new Float64Array(bins + 1);
  const pick: Uint8Array[] = [];
  for (const l of layers) {
    const next = new Float64Array(bins + 1).fill(Number.POSITIVE_INFINITY);
    const choice = new Uint8Array(bins + 1);
    l.options.forEach((o, k) => {
      const c = cost(o);
      for (let j = c; j <= bins; j++) {
        const t = best[j - c]! + o.timeMs;
        if (t < next[j]!) {
          next[j] = t;
          choice[j] = k;
        }
      }
    });
    pick.push(choice);
    best = next;
  }
  // Walk back from the full budget.
  const choices: Record<string, string> = {};
  const errors: number[] = [];
  let j = bins;
  for (let li = layers.length - 1; li >= 0; li--) {
    const l = layers[li]!;
    const o = l.options[pick[li]![j]!]!;
    choices[l.layer] = o.algorithm;
    errors.push(o.error);
    j -= cost(o);
  }
  return { choices, predictedError: combineErrors(errors), timeMs: best[bins]! };
}

/** The plan that gives every layer `algorithm` (layers without it keep their zero-error option). */
export function uniformPlan(layers: readonly LayerChoices[], algorithm: string): OptimizedPlan {
  const choices: Record<string, string> = {};
  const errors: number[] = [];
  let timeMs = 0;
  for (const l of layers) {
    const o = l.options.find((x) => x.algorithm === algorithm) ?? l.options.find((x) => x.error === 0)!;
    choices[l.layer] = o.algorithm;
    errors.push(o.error);
    timeMs += o.timeMs;
  }
  return { choices, predictedError: combineErrors(errors), timeMs };
}

/** Summed time of `choices` under the options' times. */
export function planTime(layers: readonly LayerChoices[], choices: Readonly<Record<string, string>>): number {
  let t = 0;
  for (const l of layers) {
    const o =
      l.options.find((x) => x.algorithm === (choices[l.layer] ?? 'fp32')) ?? l.options.find((x) => x.error === 0)!;
    t += o.timeMs;
  }
  return t;
}
