/**
 * @file Step caching for the `S` engine (First-Block-Cache): a small per-sample state machine around the transformer
 * split after its first block (`engines/compiler/flux/transformer-split.ts`).
 *
 * Every step runs the head (embeddings + `transformer_blocks.0`). The tail (all other blocks) runs only when needed:
 *
 *   FULL    — no residual cached yet, within the first `warmupSteps` steps, after `maxConsecutive` skips, or when
 *             the first block's residual moved: mean|r − r_full| / mean|r_full| ≥ threshold, where r_full is the
 *             first-block residual of the last FULL step. Runs the tail and stores r_full and the tail's residual.
 *   CACHED  — otherwise: the head's `cached_sample` (norm_out + proj_out of `hidden + cached residual`) is the step's
 *             output; the tail is skipped.
 *
 * Comparing against the last full step (not the previous step) keeps slow drifts from accumulating unnoticed. A
 * batched group skips only when every sample in it may; otherwise the tail runs for all and all refresh their cache.
 */
import type { Engine, HostTensor } from '../../runtime/index.ts';
import type { SampleState } from './sample-state.ts';

/** Settings of the cache (manifest `stepCache`). */
export interface StepCacheSettings {
  threshold: number;
  warmupSteps: number;
  maxConsecutive: number;
}

interface SampleCache {
  /** First-block residual `[L, D]` of the last full step. */
  first: Float32Array;
  /** Tail residual `[L, D]` of the last full step. */
  residual: Float32Array;
  /** Cached steps since then. */
  skipped: number;
}

/** Counts of full and cached transformer runs (benchmarks report the skip rate). */
export interface StepCacheStats {
  full: number;
  cached: number;
}

/** mean|a − b| / mean|b|. */
export function relativeChange(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += Math.abs(a[i]! - b[i]!);
    den += Math.abs(b[i]!);
  }
  return den > 0 ? num / den : Number.POSITIVE_INFINITY;
}

/** The cache of one engine; see the file header. */
export class StepCache {
  private readonly samples = new WeakMap<SampleState, SampleCache>();
  readonly stats: StepCacheStats = { full: 0, cached: 0 };

  constructor(
    private readonly engine: Engine & { stepCache: NonNullable<Engine['stepCache']> },
    /** Mutable so a benchmark can sweep thresholds on a loaded engine; starts as the manifest's settings. */
    public settings: StepCacheSettings,
  ) {
    // Model width D, the residuals' last axis, from the head's declared `hidden` output [B, L, D].
    const hidden = engine.manifest.stepCache?.head.outputs.find((o) => o.name === 'hidden');
    const d = hidden?.dims[2];
    if (typeof d !== 'number')
      throw new Error(`${engine.manifestPath}: step-cache head has no [B, L, D] hidden output`);
    this.dim = d;
  }

  private readonly dim: number;

  /** The transformer output `[B, L, C]` for `group` given the full graph's `feeds`. */
  async run(group: readonly SampleState[], feeds: Record<string, HostTensor>): Promise<Float32Array> {
    const { head, tail } = this.engine.stepCache;
    const dim = this.dim;
    const b = group.length;
    const l = feeds.hidden_states!.dims[1]!;
    const per = l * dim;
    const cached = new Float32Array(b * per); // zeros where nothing is cached: that sample's cached_sample is unused
    group.forEach((s, i) => {
      const c = this.samples.get(s);
      if (c) cached.set(c.residual, i * per);
    });
    const h = await head.run({ ...feeds, cached_residual: { data: cached, dims: [b, l, dim] } });
    const first = h.first_residual!.data as Float32Array;
    const skip = group.every((s, i) => {
      const c = this.samples.get(s);
      if (!c || s.step < this.settings.warmupSteps || c.skipped >= this.settings.maxConsecutive) return false;
      return relativeChange(first.subarray(i * per, (i + 1) * per), c.first) < this.settings.threshold;
    });
    if (skip) {
      for (const s of group) this.samples.get(s)!.skipped++;
      this.stats.cached++;
      return h.cached_sample!.data as Float32Array;
    }
    const t = await tail.run({
      hidden: h.hidden!,
      encoder_hidden: h.encoder_hidden!,
      silu_temb: h.silu_temb!,
      rope_cos: feeds.rope_cos!,
      rope_sin: feeds.rope_sin!,
    });
    const residual = t.residual!.data as Float32Array;
    group.forEach((s, i) => {
      this.samples.set(s, {
        first: first.slice(i * per, (i + 1) * per),
        residual: residual.slice(i * per, (i + 1) * per),
        skipped: 0,
      });
    });
    this.stats.full++;
    return t.sample!.data as Float32Array;
  }
}

const caches = new WeakMap<Engine, StepCache>();

/** The step cache of an engine with a `stepCache` manifest entry (created on first use), else undefined. */
export function stepCacheOf(engine: Engine): StepCache | undefined {
  const sc = engine.manifest.stepCache;
  if (!sc || !engine.stepCache) return undefined;
  let c = caches.get(engine);
  if (!c) {
    c = new StepCache(engine as Engine & { stepCache: NonNullable<Engine['stepCache']> }, {
      threshold: sc.threshold,
      warmupSteps: sc.warmupSteps,
      maxConsecutive: sc.maxConsecutive,
    });
    caches.set(engine, c);
  }
  return c;
}
