/**
 * @file The CUDA engine's planned modes (L, M, and the S decision) for one loaded bf16 model, from the engine's own
 * `calibrate` (issue 15; engines/cuda/NOTES.md sessions 12a and 14).
 *
 * Inputs: the ONNX planner's two calibration prompts (`elastic-plan.ts` CALIBRATION), one sample each, at 512x512
 * with the model's default T5 length and the real schedule of a 3-step run (the project's sigma schedule with its
 * dynamic shift at that size: the base trajectory sees high, middle and low noise). The engine runs the base
 * trajectory once, then every transformer Linear alone in fp8 on it (its solo error and GEMM times); on FLUX.1-dev
 * that is ~352 x 3 forwards at 512x512, about a minute, once per (engine build, card, model).
 *
 * Planning: `tightenCudaPlans` (cuda-planner.ts) over the modes' budgets (L 1 %, M 1.5 %, S 2 %, against the bf16
 * base), each plan's error measured whole by `calibrate` with `verify` and `per_layer: false`. S: the engine's `fp8`
 * preset is measured too (`verify` takes presets) and kept when its measured error fits S's budget and the table
 * prices it at least as fast as the planned S (its layers' summed fp8 saving >= the plan's); otherwise S serves the
 * planned rules. Why keep the preset when it qualifies: it is what the S benchmark rows measure
 * (bench/results/cuda-modes-*), and its LayerNorm-fed layers get fp8 activations from their norm, which the table
 * prices as an upper bound (it includes the input quantisation), so the table undervalues it.
 *
 * Modes whose plans have the same rules share one engine plan (one set of alternate weights): the first mode, in
 * L, M, S order, names it.
 *
 * Step caching per mode is calibrated after this, on the same engine reloaded with these plans (`cuda-step-cache.ts`).
 */
import type { CudaCalibrateArgs, CudaEngineClient, CudaPlanSpec } from '../runtime/cuda/index.ts';
import { CUDA_FP8_PLAN, type CudaPlannedModes } from './cuda-modes.ts';
import {
  type CudaCalibration,
  type CudaModePlan,
  cudaPlannedBudgets,
  parseCudaCalibration,
  tightenCudaPlans,
} from './cuda-planner.ts';
import { CALIBRATION } from './flux/elastic-plan.ts';
import { packLatents } from './flux/latents.ts';
import { noiseForSeeds } from './flux/noise.ts';
import { type FlowMatchConfig, fluxSigmas } from './flux/schedule.ts';
import type { FluxTokenizers } from './flux/tokenize.ts';

/**
 * Bump when calibration or planning changes in a way that must invalidate stored CUDA plans.
 * 2: the manifest holds each planned mode's step caching (`cuda-step-cache.ts`).
 * 3: the step caching is searched under several caching rules (at most 1, then 2 cached steps in a row) and each mode
 *    keeps the rule caching the most steps over its floor (`CUDA_STEP_CACHE_RULES`).
 * 4: plans may hold fp8row layers (each layer bf16, fp8 or fp8row; `counts.fp8row`, `fp8rowLayers`), and the
 *    identity says whether fp8row was offered (`fp8row`, CUDA_PLANNER_FP8ROW).
 */
export const CUDA_PLANNER_VERSION = '4';

/** The calibration inputs (see the file header); part of the manifest key. */
export const CUDA_CALIBRATION = {
  prompts: CALIBRATION.prompts,
  size: 512,
  steps: 3,
  guidance: 3.5,
  /** Seed of each prompt's starting noise (torch's CPU generator, as the executor draws it). */
  seeds: [1000, 1001],
  /** Timed repetitions per layer GEMM. */
  reps: 5,
} as const;

/**
 * The engine's `fp8` preset, as engines/cuda/src/precision_plan.cpp writes its rules: the layers it makes fp8
 * (globs over the engine's layer names, `*` any text). Used to price the preset from the calibration table.
 */
export const CUDA_FP8_PRESET_GLOBS: readonly string[] = [
  'transformer/transformer_blocks.*.attn.to_q+*',
  'transformer/transformer_blocks.*.attn.add_q_proj+*',
  'transformer/transformer_blocks.*.ff.net.0.proj',
  'transformer/transformer_blocks.*.ff_context.net.0.proj',
  'transformer/single_transformer_blocks.*.attn.to_q+*',
  'transformer/single_transformer_blocks.*.proj_mlp',
];

/** What was decided for S. */
export interface CudaPresetCheck {
  /** The preset's measured error (`verify`). */
  measuredError: number;
  /** Its layers' summed fp8 saving per step from the table (ms); null when one of them was not measured. */
  gainMs: number | null;
  /** S serves the preset (true) or the planned S rules. */
  kept: boolean;
}

/** One calibration's outcome: the table, every mode's plan, the preset check and the plans served. */
export interface CudaPlannedOutcome {
  calibration: CudaCalibration;
  plans: Record<string, CudaModePlan>;
  preset: CudaPresetCheck;
  served: CudaPlannedModes;
  /** Engine time of the calibration calls (ms). */
  ms: number;
}

/** The `calibrate` inputs: both prompts as one batch of two samples (see the file header). */
export function cudaCalibrationInputs(tokenizers: FluxTokenizers, scheduler: FlowMatchConfig): CudaCalibrateArgs {
  const c = CUDA_CALIBRATION;
  const side = c.size / 16;
  const prompts = [...c.prompts];
  const t5Len = tokenizers.defaultT5Length;
  const per = side * side * 64;
  const latents = new Float32Array(prompts.length * per);
  // Each sample's own generator, packed [1, L, 64] as the executor sends a text-to-image sample's noise.
  c.seeds.forEach((seed, i) => {
    latents.set(packLatents(noiseForSeeds([seed], 16, side * 2, side * 2), 1, 16, side * 2, side * 2), i * per);
  });
  return {
    batch: prompts.length,
    height: c.size,
    width: c.size,
    clipIds: Int32Array.from(tokenizers.encodeClip(prompts), Number),
    t5Ids: Int32Array.from(tokenizers.encodeT5(prompts, t5Len), Number),
    t5Len,
    sigmas: fluxSigmas(c.steps, side * side, scheduler).sigmas,
    guidance: prompts.map(() => c.guidance),
    latents,
    reps: c.reps,
  };
}

/** True when the engine's glob `pattern` (`*`: any text) matches `name` whole. */
export function engineGlobMatch(pattern: string, name: string): boolean {
  const re = pattern
    .split('*')
    .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${re}$`).test(name);
}

/** The preset's fp8 saving per step priced from the table; null when one of its layers has no fp8 time. */
export function presetGainMs(cal: CudaCalibration): number | null {
  let gain = 0;
  for (const l of cal.layers) {
    if (!CUDA_FP8_PRESET_GLOBS.some((g) => engineGlobMatch(g, l.name))) continue;
    if (l.ms_fp8 === null) return null;
    gain += l.ms_bf16 - l.ms_fp8;
  }
  return gain;
}

/**
 * The plans served per mode: S keeps the preset when it fits S's budget and is at least as fast as the planned S;
 * modes with the same rules share the first one's plan name.
 */
export function servedCudaPlans(
  plans: Readonly<Record<string, CudaModePlan>>,
  preset: { measuredError: number; gainMs: number | null },
): { served: CudaPlannedModes; kept: boolean } {
  const s = plans.S!;
  const kept = preset.measuredError <= s.budget && preset.gainMs !== null && preset.gainMs >= s.gainMs;
  const byRules = new Map<CudaPlanSpec, string>();
  // The plan name of a mode: the first mode's with the same rules, else its own.
  const entry = (mode: 'L' | 'M' | 'S', rules: CudaPlanSpec) => {
    const plan = byRules.get(rules) ?? mode;
    byRules.set(rules, plan);
    return { plan, rules };
  };
  const L = entry('L', plans.L!.rules);
  const M = entry('M', plans.M!.rules);
  const S = kept ? { plan: CUDA_FP8_PLAN, rules: 'fp8' } : entry('S', s.rules);
  return { served: { L, M, S }, kept };
}

/**
 * Calibrates the loaded bf16 model on `client`, plans L, M, S, measures every plan and the preset, and decides
 * what each mode serves.
 * @throws Error when the engine refuses, its answer is malformed, or a plan stays over its budget
 */
export async function calibrateCudaModes(
  client: CudaEngineClient,
  inputs: CudaCalibrateArgs,
  onLog?: (m: string) => void,
  options: { fp8row?: boolean } = {},
): Promise<CudaPlannedOutcome> {
  let ms = 0;
  // fp8row trials only when asked: the planner then routes every layer the table measured in it.
  const first = await client.calibrate({ ...inputs, perLayer: true, ...(options.fp8row ? { fp8row: true } : {}) });
  ms += first.ms;
  const calibration = parseCudaCalibration(first.header);
  const measured = calibration.layers.filter((l) => l.fp8).length;
  const rows = calibration.layers.filter((l) => l.fp8row).length;
  onLog?.(
    `cuda planner: calibrated ${calibration.layers.length} transformer Linears (${measured} in fp8${options.fp8row ? `, ${rows} in fp8row` : ''}) at ${inputs.width}x${inputs.height}, ${calibration.steps} steps, in ${first.ms.toFixed(0)} ms`,
  );
  const verify = async (rules: Readonly<Record<string, CudaPlanSpec>>) => {
    const v = await client.calibrate({ ...inputs, reps: 1, perLayer: false, verify: rules });
    ms += v.ms;
    const out: Record<string, number> = {};
    for (const c of v.verified) out[c.name] = c.relErr;
    return out;
  };
  const budgets = cudaPlannedBudgets();
  const plans = await tightenCudaPlans(calibration, budgets, verify, onLog ? { onLog } : {});
  for (const p of Object.values(plans)) {
    // tightenCudaPlans ends at the base (error 0) for a mode it cannot fit; anything else over is a bug or a lie.
    if (!(p.measuredError !== undefined && p.measuredError <= p.budget))
      throw new Error(`plan ${p.mode} measured ${p.measuredError} over its budget ${p.budget} after tightening`);
  }
  const presetError = (await verify({ [CUDA_FP8_PLAN]: 'fp8' }))[CUDA_FP8_PLAN];
  if (presetError === undefined || !Number.isFinite(presetError))
    throw new Error('calibrate did not measure the fp8 preset');
  const gainMs = presetGainMs(calibration);
  const { served, kept } = servedCudaPlans(plans, { measuredError: presetError, gainMs });
  onLog?.(
    `cuda planner: fp8 preset measured ${presetError.toExponential(2)}, saves ${gainMs === null ? 'unknown' : gainMs.toFixed(3)} ms vs planned S ${plans.S!.gainMs.toFixed(3)} ms (budget ${plans.S!.budget}): S serves ${kept ? 'the fp8 preset' : 'the planned rules'}`,
  );
  return { calibration, plans, preset: { measuredError: presetError, gainMs, kept }, served, ms };
}
