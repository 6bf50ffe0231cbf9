/**
 * @file The flow-matching Euler sampler as diffusers' FluxPipeline drives FlowMatchEulerDiscreteScheduler
 * (docs/FLUX_SPEC.md §4): the typed scheduler config, the resolution-dependent shift `mu`, the sigma / timestep schedule and
 * one Euler step.
 *
 * Float precision follows diffusers so the schedule matches to float32 rounding: FluxPipeline builds the base sigmas
 * with numpy in float64 (`np.linspace(1, 1/N, N)`), `set_timesteps` casts them to float32 and then shifts them with
 * numpy float32 arithmetic (a Python float operand is rounded to float32 first), and torch computes
 * `timesteps = sigmas·1000` in float32. `Math.fround` after each operation reproduces that: a float32 +, −, ×, ÷ is
 * the double result rounded once to float32.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { checkDim, FluxArgumentError } from './latents.ts';

const f32 = Math.fround;

/** `scheduler_config.json` could not be read, is not JSON, or holds values this sampler does not support. */
export class SchedulerConfigError extends Error {
  override name = 'SchedulerConfigError';
  constructor(
    /** The file (or source label) that was rejected. */
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
  }
}

/** The fields of diffusers' FlowMatchEulerDiscreteScheduler config that matter here, with diffusers' defaults. */
const RawSchedulerConfig = z
  .object({
    num_train_timesteps: z.number().int().positive().default(1000),
    shift: z.number().positive().default(1.0),
    use_dynamic_shifting: z.boolean().default(false),
    base_shift: z.number().nullable().default(0.5),
    max_shift: z.number().nullable().default(1.15),
    base_image_seq_len: z.number().int().positive().nullable().default(256),
    max_image_seq_len: z.number().int().positive().nullable().default(4096),
    time_shift_type: z.enum(['exponential', 'linear']).default('exponential'),
    shift_terminal: z.number().nullable().default(null),
    invert_sigmas: z.literal(false, { message: 'invert_sigmas=true (Mochi) is not supported' }).default(false),
    stochastic_sampling: z.literal(false, { message: 'stochastic_sampling is not supported' }).default(false),
    use_karras_sigmas: z.literal(false, { message: 'karras sigmas are not supported' }).nullable().default(false),
    use_exponential_sigmas: z
      .literal(false, { message: 'exponential sigmas are not supported' })
      .nullable()
      .default(false),
    use_beta_sigmas: z.literal(false, { message: 'beta sigmas are not supported' }).nullable().default(false),
  })
  .loose();

/** Typed FlowMatchEulerDiscreteScheduler config (docs/FLUX_SPEC.md §1.3). */
export interface FlowMatchConfig {
  numTrainTimesteps: number;
  /** Static shift; ignored when `useDynamicShifting` (FLUX.1-dev ships 3.0 and ignores it). */
  shift: number;
  /** Shift by `mu` from the image token count (true for FLUX.1-dev). */
  useDynamicShifting: boolean;
  baseShift: number;
  maxShift: number;
  baseImageSeqLen: number;
  maxImageSeqLen: number;
  timeShiftType: 'exponential' | 'linear';
  /** When set, the schedule is stretched so its last sigma equals this value. */
  shiftTerminal: number | null;
}

/** FLUX.1-dev's scheduler config (dynamic shifting through (256, 0.5) and (4096, 1.15)). */
export const FLUX_DEV_SCHEDULER: Readonly<FlowMatchConfig> = Object.freeze({
  numTrainTimesteps: 1000,
  shift: 3.0,
  useDynamicShifting: true,
  baseShift: 0.5,
  maxShift: 1.15,
  baseImageSeqLen: 256,
  maxImageSeqLen: 4096,
  timeShiftType: 'exponential',
  shiftTerminal: null,
});

/**
 * Validates the parsed content of a `scheduler_config.json`.
 * @param source the file name used in error messages.
 * @throws SchedulerConfigError naming `source` and the offending field.
 */
export function parseSchedulerConfig(json: unknown, source = 'scheduler_config.json'): FlowMatchConfig {
  const r = RawSchedulerConfig.safeParse(json);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SchedulerConfigError(source, issues);
  }
  const c = r.data;
  // diffusers' FluxPipeline falls back to these defaults through `config.get(...)` when a field is null.
  return {
    numTrainTimesteps: c.num_train_timesteps,
    shift: c.shift,
    useDynamicShifting: c.use_dynamic_shifting,
    baseShift: c.base_shift ?? 0.5,
    maxShift: c.max_shift ?? 1.15,
    baseImageSeqLen: c.base_image_seq_len ?? 256,
    maxImageSeqLen: c.max_image_seq_len ?? 4096,
    timeShiftType: c.time_shift_type,
    shiftTerminal: c.shift_terminal,
  };
}

/**
 * Reads and validates `<modelDir>/scheduler/scheduler_config.json`.
 * @throws SchedulerConfigError naming the file when it is missing, not JSON, or invalid.
 */
export function loadSchedulerConfig(modelDir: string): FlowMatchConfig {
  const file = join(modelDir, 'scheduler', 'scheduler_config.json');
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SchedulerConfigError(file, `cannot read JSON (${(err as Error).message})`);
  }
  return parseSchedulerConfig(json, file);
}

/**
 * The resolution-dependent shift: the straight line through `(baseImageSeqLen, baseShift)` and
 * `(maxImageSeqLen, maxShift)` at `imageSeqLen`, not clamped (so it extrapolates past 4096 tokens).
 * Float64, as diffusers' `calculate_shift` runs in Python floats.
 */
export function calculateShift(imageSeqLen: number, cfg: FlowMatchConfig): number {
  checkDim('imageSeqLen', imageSeqLen);
  const m = (cfg.maxShift - cfg.baseShift) / (cfg.maxImageSeqLen - cfg.baseImageSeqLen);
  const b = cfg.baseShift - m * cfg.baseImageSeqLen;
  return imageSeqLen * m + b;
}

/** numpy's `linspace(start, stop, num)` in float64: `i·step + start`, last element exactly `stop`. */
function linspace(start: number, stop: number, num: number): number[] {
  const out = new Array<number>(num);
  const div = num - 1;
  const step = div > 0 ? (stop - start) / div : 0;
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  if (num > 1) out[num - 1] = stop;
  return out;
}

/** A sampling schedule: `sigmas[i]` is the noise level before step i, `sigmas[N] = 0`. */
export interface FluxSchedule {
  /** `Float32Array(N + 1)`, decreasing from 1 to the terminal 0. */
  sigmas: Float32Array;
  /** `Float32Array(N)`, `sigmas[i]·1000` in float32 (the scheduler's timesteps). */
  timesteps: Float32Array;
  /** The dynamic shift used, or null when the config shifts statically. */
  mu: number | null;
}

/**
 * The schedule FluxPipeline runs for `steps` denoising steps over `imageSeqLen` image tokens (docs/FLUX_SPEC.md §4.1).
 * @throws FluxArgumentError naming `steps` or `imageSeqLen` when not a positive integer.
 */
export function fluxSigmas(steps: number, imageSeqLen: number, cfg: FlowMatchConfig): FluxSchedule {
  checkDim('steps', steps);
  checkDim('imageSeqLen', imageSeqLen);
  // FluxPipeline: np.linspace(1.0, 1/N, N) in float64; set_timesteps: .astype(np.float32).
  const base = linspace(1.0, 1 / steps, steps).map(f32);
  let shifted: number[];
  let mu: number | null = null;
  if (cfg.useDynamicShifting) {
    mu = calculateShift(imageSeqLen, cfg);
    // time_shift(mu, 1.0, t) = E / (E + (1/t − 1)^1), E = exp(mu) (exponential) or mu (linear), all float32.
    const e = f32(cfg.timeShiftType === 'exponential' ? Math.exp(mu) : mu);
    shifted = base.map((t) => f32(e / f32(e + f32(f32(1 / t) - 1))));
  } else {
    // shift·t / (1 + (shift − 1)·t), float32.
    const s = f32(cfg.shift);
    const sm1 = f32(cfg.shift - 1);
    shifted = base.map((t) => f32(f32(s * t) / f32(1 + f32(sm1 * t))));
  }
  if (cfg.shiftTerminal !== null && cfg.shiftTerminal !== 0) {
    // stretch_shift_to_terminal: 1 − (1 − t)/k with k = (1 − t_last)/(1 − shift_terminal).
    const oneMinus = shifted.map((t) => f32(1 - t));
    const k = f32(oneMinus[oneMinus.length - 1]! / f32(1 - cfg.shiftTerminal));
    shifted = oneMinus.map((z) => f32(1 - f32(z / k)));
  }
  const sigmas = new Float32Array(steps + 1);
  sigmas.set(shifted);
  const timesteps = new Float32Array(steps);
  for (let i = 0; i < steps; i++) timesteps[i] = sigmas[i]! * cfg.numTrainTimesteps;
  return { sigmas, timesteps, mu };
}

/**
 * The `timestep` input of the transformer for scheduler timestep `t`: FluxPipeline passes `t / 1000` computed in
 * float32, which can differ from `sigma` in the last bit. Use this rather than the sigma for bit-level parity.
 */
export function modelTimestep(t: number, numTrainTimesteps = 1000): number {
  return f32(f32(t) / numTrainTimesteps);
}

/**
 * One Euler step of the flow ODE in float32: `out = latents + (sigmaNext − sigma)·v`, with `dt` rounded to float32
 * first and the product rounded before the add, as torch computes it.
 * @param out destination; defaults to a new array. Pass `latents` itself to update in place.
 * @returns `out`.
 * @throws FluxArgumentError when `v` or `out` differ in length from `latents`.
 */
export function eulerStep(
  latents: Float32Array,
  v: Float32Array,
  sigma: number,
  sigmaNext: number,
  out: Float32Array = new Float32Array(latents.length),
): Float32Array {
  if (v.length !== latents.length) {
    throw new FluxArgumentError('v', `length ${v.length} differs from latents length ${latents.length}`);
  }
  if (out.length !== latents.length) {
    throw new FluxArgumentError('out', `length ${out.length} differs from latents length ${latents.length}`);
  }
  const dt = f32(f32(sigmaNext) - f32(sigma));
  for (let i = 0; i < latents.length; i++) out[i] = latents[i]! + f32(dt * v[i]!);
  return out;
}
