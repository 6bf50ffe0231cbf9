/**
 * @file The CUDA engine's per-layer precision planner (issue 15): from the engine's `calibrate` table (every
 * transformer Linear's relative output error when it alone runs in fp8, and its GEMM time per step in bf16 and fp8;
 * engines/cuda/PROTOCOL.md), the fp8 layer set of each planned mode (L, M, S) under its error budget, as the rules
 * string `load`'s `plans` takes.
 *
 * Selection is the ONNX planner's (`src/shared/plan-optimize.ts`, shared with `engines/compiler/planner/`): a
 * multiple-choice knapsack that minimises the summed layer time under a root-sum-square error model,
 * `E(plan) ≈ sqrt(Σ eᵢ²)` over the chosen layers' solo errors. Why that rule and not the plain sum: fp8 rounding of
 * different layers is uncorrelated noise, so their output errors add in quadrature; the plain sum would be a strict
 * upper bound that leaves most of the budget unused. The model can be optimistic (errors that add coherently), so
 * the chosen plan's real error is measured (`calibrate`'s `verify`) and the target tightened when it is over, as the
 * ONNX planner does ({@link tightenCudaPlans}).
 *
 * Budgets are the modes' `errorBudget` (modes.ts: L 1 %, M 1.5 %, S 2 %) read as the relative L2 error of the
 * transformer output against the engine's base plan (bf16), on the calibration inputs: the CUDA engine has no f32
 * reference at serving time, and the bf16 base is what `original` and XL serve on it.
 *
 * A layer is offered fp8 only when the engine measured it (`fp8`, a finite error) and fp8 saves time there (the
 * ONNX planner's rule: an option that saves nothing is never chosen). Likewise fp8row (fp8 with per-token activation
 * and per-channel weight scales: less error, a little slower than fp8), offered only where the table has it (the
 * engine measures it when `calibrate` asks `fp8row: true`, CUDA_PLANNER_FP8ROW): each layer then picks at most one
 * of bf16, fp8, fp8row, the knapsack choosing between them (it is a multiple-choice knapsack already).
 *
 * Plans are nested by default (L ⊆ M ⊆ S in quantised layers): each larger budget keeps the smaller one's layers
 * and spends only what is left of its squared budget, so a faster mode never returns a layer to bf16 (and the
 * modes' alternates could be shared). A kept layer may still move to a faster algorithm (fp8row -> fp8): that option
 * costs the growth of its squared error, `e_new² - e_kept²` (0 when the faster one is also more accurate), which is
 * exactly what it adds to the plan's `Σ eᵢ²`. Moving a kept layer to a slower, more accurate algorithm would free
 * budget (a negative cost the knapsack has no room for), so a larger budget never does that.
 */
import { combineErrors, type LayerChoices, optimizePlan } from '../shared/plan-optimize.ts';
import { isPlannedMode, MODE_NAMES, resolveMode } from '../shared/vocabulary/modes.ts';

/** One row of the engine's `calibrated` answer. */
export interface CudaLayerCalibration {
  /** The engine's layer name (`transformer/<checkpoint name>`, `+`-joined when stacked): what plan rules match. */
  name: string;
  in: number;
  out: number;
  base: string;
  /** An fp8 alternate was measured. */
  fp8: boolean;
  /** Relative L2 error of the transformer output with this layer alone in fp8 (null unless `fp8`). */
  rel_err_fp8: number | null;
  /** GEMM time per step in the base type (ms). */
  ms_bf16: number;
  /** GEMM time per step in fp8 (ms; null unless `fp8`). */
  ms_fp8: number | null;
  skip?: string;
  /** An fp8row alternate was measured (only when `calibrate` asked `fp8row: true`; absent: not measured). */
  fp8row?: boolean;
  /** Relative L2 error of the transformer output with this layer alone in fp8row (null unless `fp8row`). */
  rel_err_fp8row?: number | null;
  /** GEMM time per step in fp8row, its per-token quantiser and scaling epilogue included (ms; null unless `fp8row`). */
  ms_fp8row?: number | null;
  /** Why fp8row was not measured. */
  skip_fp8row?: string;
}

/** The algorithms a layer may leave bf16 for. */
export type CudaQuantAlgorithm = 'fp8' | 'fp8row';

/** The engine's `calibrated` answer (the fields the planner reads). */
export interface CudaCalibration {
  layers: CudaLayerCalibration[];
  /** One base transformer forward (ms). */
  base_ms: number;
  steps: number;
}

/** One mode's plan. */
export interface CudaModePlan {
  mode: string;
  /** Relative L2 error budget of the transformer output against the base plan. */
  budget: number;
  /** The layers run in fp8 (per-tensor scales), in the table's order. */
  fp8Layers: string[];
  /** The layers run in fp8row (per-token and per-channel scales), in the table's order ([] unless offered). */
  fp8rowLayers: string[];
  /**
   * `load`'s `plans` entry: `name=fp8;name=fp8row;...` with exact layer names in the table's order, or the `bf16`
   * preset when every layer is bf16.
   */
  rules: string;
  /** Layers per algorithm. */
  counts: { bf16: number; fp8: number; fp8row: number };
  /** `sqrt(Σ eᵢ²)` of the quantised layers' solo errors (each under its algorithm). */
  predictedError: number;
  /** Measured error of the whole plan, once verified ({@link tightenCudaPlans}). */
  measuredError?: number;
  /** GEMM time saved per step (ms). */
  gainMs: number;
  /** `base_ms - gainMs`: the predicted transformer forward (ms). */
  predictedStepMs: number;
}

const BF16 = 'bf16';
const FP8 = 'fp8';
const FP8ROW = 'fp8row';

/** The planned modes' budgets from the vocabulary (L, M, S), smallest first. */
export function cudaPlannedBudgets(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of MODE_NAMES.map(resolveMode).filter(isPlannedMode)) out[m.name] = m.errorBudget!;
  return out;
}

/**
 * Checks a `calibrated` header's shape (the engine is another process: trust nothing).
 * @throws Error naming the first malformed field
 */
export function parseCudaCalibration(header: Record<string, unknown>): CudaCalibration {
  const fail = (m: string): never => {
    throw new Error(`calibrated: ${m}`);
  };
  const num = (v: unknown, what: string) => (typeof v === 'number' && Number.isFinite(v) ? v : fail(`${what}`));
  if (!Array.isArray(header.layers)) fail('layers must be an array');
  const seen = new Set<string>();
  const layers = (header.layers as Record<string, unknown>[]).map((l, i) => {
    if (typeof l.name !== 'string' || l.name === '') fail(`layers[${i}].name`);
    const name = l.name as string;
    if (seen.has(name)) fail(`layer ${name} listed twice`);
    seen.add(name);
    const fp8 = l.fp8 === true;
    return {
      name,
      in: num(l.in, `${name}.in`),
      out: num(l.out, `${name}.out`),
      base: typeof l.base === 'string' ? l.base : fail(`${name}.base`),
      fp8,
      rel_err_fp8: fp8 && typeof l.rel_err_fp8 === 'number' ? l.rel_err_fp8 : null,
      ms_bf16: num(l.ms_bf16, `${name}.ms_bf16`),
      ms_fp8: fp8 && typeof l.ms_fp8 === 'number' ? l.ms_fp8 : null,
      ...(typeof l.skip === 'string' ? { skip: l.skip } : {}),
      // fp8row fields only when measured (a table without them, the engine not asked, reads as today's).
      ...(l.fp8row === true
        ? {
            fp8row: true,
            rel_err_fp8row: typeof l.rel_err_fp8row === 'number' ? l.rel_err_fp8row : null,
            ms_fp8row: typeof l.ms_fp8row === 'number' ? l.ms_fp8row : null,
          }
        : {}),
      ...(typeof l.skip_fp8row === 'string' ? { skip_fp8row: l.skip_fp8row } : {}),
    };
  });
  return { layers, base_ms: num(header.base_ms, 'base_ms'), steps: num(header.steps, 'steps') };
}

/** A measured error and time that make an option: finite, non-negative error, and faster than bf16. */
function eligible(
  measured: boolean | undefined,
  err: number | null | undefined,
  ms: number | null | undefined,
  bf16Ms: number,
) {
  return (
    measured === true &&
    typeof err === 'number' &&
    Number.isFinite(err) &&
    err >= 0 &&
    typeof ms === 'number' &&
    ms < bf16Ms
  );
}

/** The quantised options of `l` the planner may pick (fp8 and fp8row where measured and faster than bf16). */
function quantOptions(l: CudaLayerCalibration): { algorithm: CudaQuantAlgorithm; error: number; timeMs: number }[] {
  return [
    ...(eligible(l.fp8, l.rel_err_fp8, l.ms_fp8, l.ms_bf16)
      ? [{ algorithm: FP8 as CudaQuantAlgorithm, error: l.rel_err_fp8!, timeMs: l.ms_fp8! }]
      : []),
    ...(eligible(l.fp8row, l.rel_err_fp8row, l.ms_fp8row, l.ms_bf16)
      ? [{ algorithm: FP8ROW as CudaQuantAlgorithm, error: l.rel_err_fp8row!, timeMs: l.ms_fp8row! }]
      : []),
  ];
}

/** The table as the optimiser's choices: bf16 (error 0) always, fp8 and fp8row where eligible. */
export function cudaLayerChoices(cal: CudaCalibration): LayerChoices[] {
  return cal.layers.map((l) => ({
    layer: l.name,
    options: [{ algorithm: BF16, error: 0, timeMs: l.ms_bf16 }, ...quantOptions(l)],
  }));
}

/** One quantised layer of a plan: a plain name is fp8. */
export type CudaPlanLayer = string | { name: string; algorithm: CudaQuantAlgorithm };

/**
 * `load`'s `plans` entry for the quantised layers (a plain name: fp8), in the given order: exact names (no globs),
 * or the bf16 preset for none.
 */
export function cudaPlanRules(layers: readonly CudaPlanLayer[]): string {
  const rules = layers.map((l) => (typeof l === 'string' ? { name: l, algorithm: FP8 } : l));
  for (const { name } of rules)
    if (/[*;=]/.test(name)) throw new Error(`cudaPlanRules: layer name ${name} holds a rule character (* ; =)`);
  return rules.length === 0 ? BF16 : rules.map((r) => `${r.name}=${r.algorithm}`).join(';');
}

/** A plan's layer → algorithm (bf16 layers absent). */
type Assignment = ReadonlyMap<string, CudaQuantAlgorithm>;

/** The solo error and time of `layer` under `alg`, from its choices. */
function optionOf(c: LayerChoices, alg: string) {
  const o = c.options.find((x) => x.algorithm === alg);
  if (!o) throw new Error(`cuda planner: layer ${c.layer} has no ${alg} option`);
  return o;
}

function modePlan(cal: CudaCalibration, mode: string, budget: number, chosen: Assignment): CudaModePlan {
  const errors: number[] = [];
  const layers: { name: string; algorithm: CudaQuantAlgorithm }[] = [];
  let gainMs = 0;
  for (const l of cal.layers) {
    const alg = chosen.get(l.name);
    if (!alg) continue;
    const o = quantOptions(l).find((x) => x.algorithm === alg)!;
    layers.push({ name: l.name, algorithm: alg });
    errors.push(o.error);
    gainMs += l.ms_bf16 - o.timeMs;
  }
  const fp8Layers = layers.filter((l) => l.algorithm === FP8).map((l) => l.name);
  const fp8rowLayers = layers.filter((l) => l.algorithm === FP8ROW).map((l) => l.name);
  return {
    mode,
    budget,
    fp8Layers,
    fp8rowLayers,
    rules: cudaPlanRules(layers),
    counts: { bf16: cal.layers.length - layers.length, fp8: fp8Layers.length, fp8row: fp8rowLayers.length },
    predictedError: combineErrors(errors),
    gainMs,
    predictedStepMs: cal.base_ms - gainMs,
  };
}

/** Layers a plan quantises (any algorithm). */
export function cudaQuantisedLayers(p: CudaModePlan): number {
  return p.fp8Layers.length + p.fp8rowLayers.length;
}

/**
 * The quantised layers of one budget: the fastest assignment whose predicted error is at most `target`, keeping
 * every layer of `keep` quantised (the smaller budget's plan when nested) and spending only what is left of the
 * squared target on the others and on moving kept layers to faster algorithms (see the file header).
 */
function chooseQuant(
  choices: readonly LayerChoices[],
  target: number,
  keep: Assignment,
): { chosen: Map<string, CudaQuantAlgorithm>; error: number } {
  let kept2 = 0;
  const offered: LayerChoices[] = [];
  for (const c of choices) {
    const k = keep.get(c.layer);
    if (k === undefined) {
      if (c.options.length > 1) offered.push(c);
      continue;
    }
    const base = optionOf(c, k);
    kept2 += base.error * base.error;
    // The kept algorithm at no cost; a faster one at its squared error's growth; never bf16.
    const faster = c.options
      .filter((o) => o.algorithm !== BF16 && o.algorithm !== k && o.timeMs < base.timeMs)
      .map((o) => ({ ...o, error: Math.sqrt(Math.max(0, o.error * o.error - base.error * base.error)) }));
    offered.push({ layer: c.layer, options: [{ ...base, error: 0 }, ...faster] });
  }
  const left2 = target * target - kept2;
  const chosen = new Map(keep);
  // A budget of 0 still takes the moves that cost nothing (a faster and no less accurate algorithm).
  const plan = optimizePlan(offered, Math.sqrt(Math.max(0, left2)));
  for (const [layer, alg] of Object.entries(plan.choices))
    if (alg !== BF16) chosen.set(layer, alg as CudaQuantAlgorithm);
  const errors = choices.filter((c) => chosen.has(c.layer)).map((c) => optionOf(c, chosen.get(c.layer)!).error);
  return { chosen, error: combineErrors(errors) };
}

/**
 * Plans every budget (mode → relative error) from one calibration table; see the file header.
 * @param options.nested L ⊆ M ⊆ S (default true): budgets are planned smallest first, each keeping the previous
 *   plan's quantised layers
 * @param options.targets per-mode optimiser targets below the budget (what {@link tightenCudaPlans} lowers)
 */
export function planCudaModes(
  cal: CudaCalibration,
  budgets: Readonly<Record<string, number>>,
  options: { nested?: boolean; targets?: Readonly<Record<string, number>> } = {},
): Record<string, CudaModePlan> {
  const nested = options.nested ?? true;
  const choices = cudaLayerChoices(cal);
  const order = Object.entries(budgets).sort((a, b) => a[1] - b[1]);
  const plans: Record<string, CudaModePlan> = {};
  let keep: Assignment = new Map();
  for (const [mode, budget] of order) {
    if (!(budget >= 0)) throw new Error(`planCudaModes: budget of ${mode} must be >= 0`);
    const target = Math.min(budget, options.targets?.[mode] ?? budget);
    let pick = chooseQuant(choices, target, nested ? keep : new Map());
    // A kept set over this target (a smaller budget's plan, measured less tightly) would break the budget: plan
    // this mode on its own then.
    if (pick.error > target) pick = chooseQuant(choices, target, new Map());
    plans[mode] = modePlan(cal, mode, budget, pick.chosen);
    if (nested) keep = pick.chosen;
  }
  return plans;
}

/** Measures whole plans' errors on the engine (`calibrate` with `verify`: name → rules, per_layer false). */
export type CudaPlanVerifier = (rules: Readonly<Record<string, string>>) => Promise<Record<string, number>>;

/**
 * Plans, then checks each plan's measured error and tightens the target of every mode over its budget
 * (target × budget / measured × 0.95, the ONNX planner's rule) up to `attempts` times; a mode still over is
 * planned with no quantised layer (the base: error 0). Nesting is kept on each round.
 */
export async function tightenCudaPlans(
  cal: CudaCalibration,
  budgets: Readonly<Record<string, number>>,
  verify: CudaPlanVerifier,
  options: { nested?: boolean; attempts?: number; onLog?: (m: string) => void } = {},
): Promise<Record<string, CudaModePlan>> {
  const targets: Record<string, number> = { ...budgets };
  const attempts = options.attempts ?? 4;
  for (let round = 0; ; round++) {
    const plans = planCudaModes(cal, budgets, { nested: options.nested, targets });
    const toCheck = Object.fromEntries(
      Object.values(plans)
        .filter((p) => cudaQuantisedLayers(p) > 0)
        .map((p) => [p.mode, p.rules]),
    );
    const measured = Object.keys(toCheck).length > 0 ? await verify(toCheck) : {};
    let over = false;
    for (const p of Object.values(plans)) {
      const m = cudaQuantisedLayers(p) === 0 ? 0 : measured[p.mode];
      if (m === undefined || !Number.isFinite(m)) throw new Error(`tightenCudaPlans: no measured error for ${p.mode}`);
      p.measuredError = m;
      options.onLog?.(
        `cuda planner: ${p.mode} target ${targets[p.mode]!.toExponential(2)} predicted ${p.predictedError.toExponential(2)} measured ${m.toExponential(2)} (${p.counts.fp8} fp8, ${p.counts.fp8row} fp8row layers)`,
      );
      if (m > p.budget) {
        over = true;
        targets[p.mode] = round + 1 < attempts ? targets[p.mode]! * (p.budget / m) * 0.95 : 0;
      }
    }
    if (!over) return plans;
  }
}
