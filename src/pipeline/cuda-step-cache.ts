/**
 * @file Step caching per planned CUDA mode (issue 15): the First-Block-Cache threshold of L, M and S, calibrated on
 * the loaded model once, beside the fp8 planning (`cuda-calibration.ts`), and stored in the same plan manifest.
 *
 * Why: fp8 alone gives S ~2.96 s at 1024x1024, 28 steps on an H100 (bf16 3.57 s; engines/cuda/NOTES.md session 13),
 * while the goals are L <= 2.6 s, M <= 2.1 s, S <= 1.5 s; only skipping steps closes that gap. How much a mode may
 * skip is a quality question, so it is decided on images: each mode's floor is a PSNR against `original`
 * ({@link CUDA_MODE_PSNR_FLOORS}).
 *
 * Method: the two calibration prompts (`elastic-plan.ts` CALIBRATION), one job of one sample each (a job caches a
 * step only when every sample is under the threshold, so batch 1 is the most aggressive case), at 512x512 and the
 * served 28 steps (cache decisions depend on the step count: the first block's residual moves less per step in a
 * longer schedule), are generated with the base plan and no caching (the reference), then, per mode, with the mode's
 * fp8 plan and ascending candidate thresholds under each caching rule of {@link CUDA_STEP_CACHE_RULES} in turn (warm-up
 * 1 and at most 1 cached step in a row, the ONNX S mode's rule; then at most 2 in a row). Per rule the largest
 * candidate whose worst-prompt PSNR against the reference keeps the floor passes (`step-cache-threshold.ts`, shared
 * with the ONNX S calibration); of the rules' passing settings the mode keeps the one caching the most steps over the
 * calibration prompts, the earlier (less aggressive) rule on a tie; none passing: the mode does not cache. Why 2 in a
 * row: at most 1 caps caching at 14 of 28 steps, and S's speed goal needs ~14 or fewer full steps (flux-mini: 13
 * cached at 38.1 dB, far over S's 30 dB floor; engines/cuda/NOTES.md session 15). A later rule is tried only when the
 * earlier one kept a threshold: when even the smallest candidate misses the floor under shorter runs, longer runs
 * (which cache at least those steps at that threshold) are taken to miss it too. Modes of one plan share their
 * generations (a measurement is keyed by plan, rule and threshold).
 *
 * Cost on FLUX.1-dev (estimate, not measured): ~40 ms per step at 512x512 on an H100, so ~1.2 s per image; the
 * reference, each plan without caching and up to 11 candidates per rule, two images each, stopping at the first
 * failure: between ~15 and ~170 s once per (engine build, card, model). Open: 512x512 decisions are taken to hold at
 * 1024x1024.
 */
import type { CudaEngineClient, CudaPrepareArgs, CudaStepCache } from '../runtime/cuda/index.ts';
import type { CudaPlannedModes } from './cuda-modes.ts';
import { CALIBRATION } from './flux/elastic-plan.ts';
import { packLatents } from './flux/latents.ts';
import { noiseForSeeds } from './flux/noise.ts';
import { type FlowMatchConfig, fluxSigmas } from './flux/schedule.ts';
import {
  largestPassingThreshold,
  mostCachedSteps,
  storedPsnr,
  type ThresholdTrial,
  worstPsnr,
} from './flux/step-cache-threshold.ts';
import type { FluxTokenizers } from './flux/tokenize.ts';

/**
 * Quality floors of the planned modes, in dB: PSNR of a mode's images against `original`'s (same prompts and seeds),
 * issue 15's goals (L >= 38, M >= 34, S >= 30). The step-cache calibration keeps each mode at or above its floor.
 */
export const CUDA_MODE_PSNR_FLOORS = { L: 38, M: 34, S: 30 } as const;

/** The planned modes, in calibration order. */
export type CudaPlannedModeName = keyof typeof CUDA_MODE_PSNR_FLOORS;
const PLANNED: readonly CudaPlannedModeName[] = ['L', 'M', 'S'];

/** A caching rule beside the threshold (PROTOCOL.md `step_cache`'s `warmup_steps`, `max_consecutive`). */
export interface CudaStepCacheRule {
  warmupSteps: number;
  maxConsecutive: number;
}

/**
 * The caching rules each mode's thresholds are searched under, least aggressive first (the order breaks ties): the
 * ONNX S mode's (modes.ts) and the engine's defaults, then 2 cached steps in a row (up to 18 of 28 cached, was 14).
 */
export const CUDA_STEP_CACHE_RULES = [
  { warmupSteps: 1, maxConsecutive: 1 },
  { warmupSteps: 1, maxConsecutive: 2 },
] as const satisfies readonly CudaStepCacheRule[];

/**
 * Thresholds tried, ascending (relative L1 change of the first block's residual): finer and lower than the ONNX
 * list (`THRESHOLD_CANDIDATES`, from 0.05), since L's 38 dB floor may allow only a few cached steps.
 */
export const CUDA_THRESHOLD_CANDIDATES = [0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.2] as const;

/** The calibration's inputs, candidates, rules and floors (see the file header); part of the manifest key. */
export const CUDA_STEP_CACHE_CALIBRATION = {
  prompts: CALIBRATION.prompts,
  size: 512,
  steps: 28,
  guidance: 3.5,
  /** Seed of each prompt's starting noise (torch's CPU generator, as the executor draws it). */
  seeds: [2000, 2001],
  candidates: CUDA_THRESHOLD_CANDIDATES,
  rules: CUDA_STEP_CACHE_RULES,
  floors: CUDA_MODE_PSNR_FLOORS,
} as const;

/** One mode's calibrated step caching, as the manifest stores it. */
export interface CudaModeStepCache {
  /** The threshold its jobs send; 0: no candidate kept the floor, the mode does not cache. */
  threshold: number;
  /** The rule kept with it (one of {@link CUDA_STEP_CACHE_RULES}; the first when the mode does not cache). */
  warmupSteps: number;
  maxConsecutive: number;
  /** The mode's floor (dB). */
  minPsnr: number;
  /** Worst PSNR against `original` over the calibration prompts at `threshold` (the plan alone for 0); 100: equal. */
  psnr: number;
  /** Steps of the worst prompt's job run in full and from the cached residual at `threshold`. */
  fullSteps: number;
  cachedSteps: number;
  /** The plan alone, without caching: worst PSNR against `original`. */
  uncachedPsnr: number;
  /** Every candidate tried, in order (rule by rule), with its rule's run length and the most steps any prompt cached. */
  tried: (ThresholdTrial & { maxConsecutive: number; cachedSteps: number })[];
}

/** The calibration's outcome: each planned mode's step caching, and the engine time spent (ms, wall clock). */
export interface CudaStepCacheOutcome {
  modes: Record<CudaPlannedModeName, CudaModeStepCache>;
  ms: number;
}

/** The `prepare` inputs: one plain batch-1 job per calibration prompt (see the file header). */
export function cudaStepCacheInputs(tokenizers: FluxTokenizers, scheduler: FlowMatchConfig): CudaPrepareArgs[] {
  const c = CUDA_STEP_CACHE_CALIBRATION;
  const side = c.size / 16;
  const t5Len = tokenizers.defaultT5Length;
  return c.prompts.map((prompt, i) => ({
    batch: 1,
    height: c.size,
    width: c.size,
    clipIds: Int32Array.from(tokenizers.encodeClip([prompt]), Number),
    t5Ids: Int32Array.from(tokenizers.encodeT5([prompt], t5Len), Number),
    t5Len,
    sigmas: fluxSigmas(c.steps, side * side, scheduler).sigmas,
    guidance: [c.guidance],
    // Packed [1, L, 64], as the executor sends a text-to-image sample's noise.
    latents: packLatents(noiseForSeeds([c.seeds[i]!], 16, side * 2, side * 2), 1, 16, side * 2, side * 2),
  }));
}

/** The `prepare` step cache of a calibrated mode; undefined when it does not cache. */
export function cudaStepCacheOf(c: CudaModeStepCache | undefined): CudaStepCache | undefined {
  return c && c.threshold > 0
    ? { threshold: c.threshold, warmupSteps: c.warmupSteps, maxConsecutive: c.maxConsecutive }
    : undefined;
}

/** `served` with each mode's calibrated step caching (modes that do not cache are unchanged). */
export function withStepCaches(
  served: CudaPlannedModes,
  caches: Readonly<Record<CudaPlannedModeName, CudaModeStepCache>>,
): CudaPlannedModes {
  const one = (mode: CudaPlannedModeName) => {
    const stepCache = cudaStepCacheOf(caches[mode]);
    return { plan: served[mode].plan, rules: served[mode].rules, ...(stepCache ? { stepCache } : {}) };
  };
  return { L: one('L'), M: one('M'), S: one('S') };
}

/** One generation's decoded image and its job's step counts. */
interface Generated {
  image: Uint8Array;
  full: number;
  cached: number;
}

/** What one (plan, rule, threshold) measured against the reference. */
interface Measured {
  psnr: number;
  full: number;
  cached: number;
  /** Most steps any prompt cached. */
  mostCached: number;
  /** Steps cached over all prompts: what the choice between rules maximises. */
  totalCached: number;
  saturated: boolean;
}

/** One rule's search outcome for a mode: its largest passing threshold (0: none) and what it measured. */
interface RuleOutcome {
  rule: CudaStepCacheRule;
  threshold: number;
  measured: Measured;
  tried: CudaModeStepCache['tried'];
}

/**
 * The setting a mode keeps of its rules' outcomes (in {@link CUDA_STEP_CACHE_RULES} order, each having kept its
 * floor): the most steps cached over the calibration prompts; on a tie the earlier, less aggressive rule. A rule that
 * kept no threshold caches nothing, so it wins only when nothing caches (the first rule, threshold 0).
 */
export function bestRuleOutcome<T extends { threshold: number; measured: { totalCached: number } }>(
  outcomes: readonly T[],
): T {
  let best = outcomes[0]!;
  for (const o of outcomes.slice(1)) {
    if (o.threshold > 0 && o.measured.totalCached > best.measured.totalCached) best = o;
  }
  return best;
}

/**
 * Calibrates each planned mode's step caching on `client` (a bf16 engine loaded with `served`'s plans).
 * @throws Error when the engine refuses or ends
 */
export async function calibrateCudaStepCache(
  client: CudaEngineClient,
  inputs: readonly CudaPrepareArgs[],
  served: CudaPlannedModes,
  onLog?: (m: string) => void,
): Promise<CudaStepCacheOutcome> {
  const t0 = performance.now();
  const generate = async (
    plan: string | undefined,
    rule: CudaStepCacheRule,
    threshold: number,
  ): Promise<Generated[]> => {
    const out: Generated[] = [];
    for (const input of inputs) {
      // Threshold 0 never caches: sent as no step cache at all (the engine's bit-identical path).
      const stepCache = threshold > 0 ? { threshold, ...rule } : undefined;
      const { job } = await client.prepare({
        ...input,
        ...(plan !== undefined ? { plan } : {}),
        ...(stepCache ? { stepCache } : {}),
      });
      try {
        const p = await client.step(job);
        const img = await client.decode(job);
        out.push({ image: img.data, full: p.stepCache?.full ?? p.step, cached: p.stepCache?.cached ?? 0 });
      } finally {
        // The job's memory goes either way; a failed release only hides nothing worse than the error above.
        await client.release(job).catch(() => undefined);
      }
    }
    return out;
  };
  const [firstRule] = CUDA_STEP_CACHE_RULES;
  const reference = (await generate(undefined, firstRule, 0)).map((g) => g.image);
  const memo = new Map<string, Measured>();
  // Threshold 0 sends no step cache: one generation whatever the rule.
  const keyOf = (plan: string, rule: CudaStepCacheRule, threshold: number) =>
    threshold > 0 ? `${plan}|${rule.warmupSteps}/${rule.maxConsecutive}|${threshold}` : `${plan}|none`;
  const measure = async (plan: string, rule: CudaStepCacheRule, threshold: number): Promise<Measured> => {
    const key = keyOf(plan, rule, threshold);
    const known = memo.get(key);
    if (known) return known;
    const got = await generate(plan, rule, threshold);
    const per = got.map((g, i) => worstPsnr([g.image], [reference[i]!], 255));
    const worst = per.indexOf(Math.min(...per));
    const limit = (i: number) => mostCachedSteps(inputs[i]!.sigmas.length - 1, rule.warmupSteps, rule.maxConsecutive);
    const m: Measured = {
      psnr: per[worst]!,
      full: got[worst]!.full,
      cached: got[worst]!.cached,
      mostCached: Math.max(...got.map((g) => g.cached)),
      totalCached: got.reduce((a, g) => a + g.cached, 0),
      saturated: threshold > 0 && got.every((g, i) => g.cached === limit(i)),
    };
    memo.set(key, m);
    return m;
  };
  const modes = {} as Record<CudaPlannedModeName, CudaModeStepCache>;
  for (const mode of PLANNED) {
    const plan = served[mode].plan;
    const minPsnr = CUDA_MODE_PSNR_FLOORS[mode];
    const uncached = await measure(plan, firstRule, 0);
    const outcomes: RuleOutcome[] = [];
    for (const rule of CUDA_STEP_CACHE_RULES) {
      // A later rule only where the earlier one kept a threshold (see the file header).
      if (outcomes.length > 0 && !(outcomes.at(-1)!.threshold > 0)) break;
      const search = await largestPassingThreshold(CUDA_THRESHOLD_CANDIDATES, minPsnr, (t) => measure(plan, rule, t));
      outcomes.push({
        rule,
        threshold: search.threshold,
        measured: await measure(plan, rule, search.threshold),
        tried: search.tried.map((t) => ({
          ...t,
          maxConsecutive: rule.maxConsecutive,
          cachedSteps: memo.get(keyOf(plan, rule, t.threshold))!.mostCached,
        })),
      });
    }
    const best = bestRuleOutcome(outcomes);
    const chosen = best.measured;
    modes[mode] = {
      threshold: best.threshold,
      ...(best.threshold > 0 ? best.rule : firstRule),
      minPsnr,
      psnr: storedPsnr(chosen.psnr),
      fullSteps: chosen.full,
      cachedSteps: chosen.cached,
      uncachedPsnr: storedPsnr(uncached.psnr),
      tried: outcomes.flatMap((o) => o.tried),
    };
    const c = modes[mode];
    onLog?.(
      `cuda planner: ${mode} (plan ${plan}) without caching ${uncached.psnr.toFixed(2)} dB vs original; ` +
        (c.threshold > 0
          ? `step cache threshold ${c.threshold}, at most ${c.maxConsecutive} in a row: ${chosen.psnr.toFixed(2)} dB >= ${minPsnr}, ${chosen.cached} of ${chosen.full + chosen.cached} steps cached`
          : `no threshold keeps ${minPsnr} dB (first tried: ${c.tried[0]?.psnr.toFixed(2)} dB): no step caching`),
    );
  }
  return { modes, ms: performance.now() - t0 };
}
