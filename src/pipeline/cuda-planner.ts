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
 * ONNX planner's rule: an option that saves nothing is never chosen). Plans are nested by default (L ⊆ M ⊆ S):
 * each larger budget keeps the smaller one's layers and spends only what is left of its squared budget, so a faster
 * mode never returns a layer to bf16 (and the modes' alternates could be shared).
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
}

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
  /** The layers run in fp8, in the table's order. */
  fp8Layers: string[];
  /** `load`'s `plans` entry: `name=fp8;...` with exact layer names, or the `bf16` preset when no layer is fp8. */
  rules: string;
  /** Layers per algorithm. */
  counts: { bf16: number; fp8: number };
  /** `sqrt(Σ eᵢ²)` of the fp8 layers' solo errors. */
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
    };
  });
  return { layers, base_ms: num(header.base_ms, 'base_ms'), steps: num(header.steps, 'steps') };
}

/** True when the planner may give `l` fp8: measured, a finite error, and fp8 saves time. */
function fp8Eligible(l: CudaLayerCalibration): boolean {
  return (
    l.fp8 &&
    l.rel_err_fp8 !== null &&
    Number.isFinite(l.rel_err_fp8) &&
    l.rel_err_fp8 >= 0 &&
    l.ms_fp8 !== null &&
    l.ms_fp8 < l.ms_bf16
  );
}

/** The table as the optimiser's choices: bf16 (error 0) always, fp8 where eligible. */
export function cudaLayerChoices(cal: CudaCalibration): LayerChoices[] {
  return cal.layers.map((l) => ({
    layer: l.name,
    options: [
      { algorithm: BF16, error: 0, timeMs: l.ms_bf16 },
      ...(fp8Eligible(l) ? [{ algorithm: FP8, error: l.rel_err_fp8!, timeMs: l.ms_fp8! }] : []),
    ],
  }));
}

/** `load`'s `plans` entry for an fp8 layer set: exact names (no globs), or the bf16 preset for none. */
export function cudaPlanRules(fp8Layers: readonly string[]): string {
  for (const n of fp8Layers)
    if (/[*;=]/.test(n)) throw new Error(`cudaPlanRules: layer name ${n} holds a rule character (* ; =)`);
  return fp8Layers.length === 0 ? BF16 : fp8Layers.map((n) => `${n}=${FP8}`).join(';');
}

function modePlan(cal: CudaCalibration, mode: string, budget: number, fp8: ReadonlySet<string>): CudaModePlan {
  const fp8Layers = cal.layers.filter((l) => fp8.has(l.name)).map((l) => l.name);
  const errors: number[] = [];
  let gainMs = 0;
  for (const l of cal.layers) {
    if (!fp8.has(l.name)) continue;
    errors.push(l.rel_err_fp8!);
    gainMs += l.ms_bf16 - l.ms_fp8!;
  }
  return {
    mode,
    budget,
    fp8Layers,
    rules: cudaPlanRules(fp8Layers),
    counts: { bf16: cal.layers.length - fp8Layers.length, fp8: fp8Layers.length },
    predictedError: combineErrors(errors),
    gainMs,
    predictedStepMs: cal.base_ms - gainMs,
  };
}

/**
 * The fp8 layer set of one budget: the fastest set whose predicted error is at most `target`, keeping `keep` (the
 * smaller budget's layers when nested) and spending only what is left of the squared target on the others.
 */
function chooseFp8(
  choices: readonly LayerChoices[],
  target: number,
  keep: ReadonlySet<string>,
): { fp8: Set<string>; error: number } {
  const kept = choices.filter((c) => keep.has(c.layer));
  const keptErrors = kept.map((c) => c.options.find((o) => o.algorithm === FP8)!.error);
  const left2 = target * target - keptErrors.reduce((a, e) => a + e * e, 0);
  const fp8 = new Set(keep);
  if (left2 > 0) {
    const free = choices.filter((c) => !keep.has(c.layer) && c.options.length > 1);
    const plan = optimizePlan(free, Math.sqrt(left2));
    for (const [layer, alg] of Object.entries(plan.choices)) if (alg === FP8) fp8.add(layer);
  }
  const errors = choices.filter((c) => fp8.has(c.layer)).map((c) => c.options.find((o) => o.algorithm === FP8)!.error);
  return { fp8, error: combineErrors(errors) };
}

/**
 * Plans every budget (mode → relative error) from one calibration table; see the file header.
 * @param options.nested L ⊆ M ⊆ S (default true): budgets are planned smallest first, each keeping the previous set
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
  let keep = new Set<string>();
  for (const [mode, budget] of order) {
    if (!(budget >= 0)) throw new Error(`planCudaModes: budget of ${mode} must be >= 0`);
    const target = Math.min(budget, options.targets?.[mode] ?? budget);
    let chosen = chooseFp8(choices, target, nested ? keep : new Set());
    // A kept set over this target (a smaller budget's plan, measured less tightly) would break the budget: plan
    // this mode on its own then.
    if (chosen.error > target) chosen = chooseFp8(choices, target, new Set());
    plans[mode] = modePlan(cal, mode, budget, chosen.fp8);
    if (nested) keep = chosen.fp8;
  }
  return plans;
}

/** Measures whole plans' errors on the engine (`calibrate` with `verify`: name → rules, per_layer false). */
export type CudaPlanVerifier = (rules: Readonly<Record<string, string>>) => Promise<Record<string, number>>;

/**
 * Plans, then checks each plan's measured error and tightens the target of every mode over its budget
 * (target × budget / measured × 0.95, the ONNX planner's rule) up to `attempts` times; a mode still over is
 * planned with no fp8 layer (the base: error 0). Nesting is kept on each round.
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
        .filter((p) => p.fp8Layers.length > 0)
        .map((p) => [p.mode, p.rules]),
    );
    const measured = Object.keys(toCheck).length > 0 ? await verify(toCheck) : {};
    let over = false;
    for (const p of Object.values(plans)) {
      const m = p.fp8Layers.length === 0 ? 0 : measured[p.mode];
      if (m === undefined || !Number.isFinite(m)) throw new Error(`tightenCudaPlans: no measured error for ${p.mode}`);
      p.measuredError = m;
      options.onLog?.(
        `cuda planner: ${p.mode} target ${targets[p.mode]!.toExponential(2)} predicted ${p.predictedError.toExponential(2)} measured ${m.toExponential(2)} (${p.counts.fp8} fp8 layers)`,
      );
      if (m > p.budget) {
        over = true;
        targets[p.mode] = round + 1 < attempts ? targets[p.mode]! * (p.budget / m) * 0.95 : 0;
      }
    }
    if (!over) return plans;
  }
}
