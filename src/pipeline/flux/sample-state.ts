/**
 * @file The per-sample state of a generation while it is being denoised, and the grouping of samples into
 * transformer runs. Samples that share an image grid and a text length can run in one batched forward even when
 * they sit at different steps: every sample carries its own timestep, guidance and sigmas.
 */
import type { SampleRequest } from '../executor.ts';
import type { EditState } from './edit.ts';
import type { LatentGrid } from './latents.ts';

/** One sample between `prepare` and `decode`. */
export interface SampleState {
  id: string;
  request: SampleRequest;
  /** Latent grid of the requested size. */
  grid: LatentGrid;
  /** T5 sequence length T. */
  textLen: number;
  /** CLIP pooled embedding `[pooledDim]`. */
  pooled: Float32Array;
  /** T5 hidden states `[T, jointDim]`. */
  embeds: Float32Array;
  /** Packed latents `[L, packedChannels]`, updated in place by each step. */
  latents: Float32Array;
  /**
   * BFL Control LoRA samples: the packed VAE latents of the control image `[L, packedChannels]`, fixed; each step
   * feeds `concat(latents, control)` `[L, 2·packedChannels]` (see `control.ts`).
   */
  control?: Float32Array;
  /** img2img / inpainting: the image latents, noise and mask the steps blend with (see `edit.ts`). */
  edit?: EditState;
  /**
   * True CFG: the negative branch as a sample of its own (negative embeddings, same latents array, synced step),
   * batched with the positive one in each transformer run.
   */
  negative?: SampleState;
  /** `[N + 1]`, terminal 0. */
  sigmas: Float32Array;
  /** `[N]`, σ·1000 as the scheduler computes it. */
  timesteps: Float32Array;
  /** Steps done so far. */
  step: number;
  /**
   * Engines with a modulation component (XL): the modulation vectors of every step, `rows` `[N, width]` (row i feeds
   * step i), computed once at the sample's first step on that engine; `key` is the component's cache key.
   */
  modulation?: { key: string; rows: Float32Array; width: number };
}

/** True once every denoising step has run. */
export function isFinished(s: SampleState): boolean {
  return s.step >= s.sigmas.length - 1;
}

/** Key of samples that can share one transformer run (same token counts and mode). */
export function stepGroupKey(s: SampleState): string {
  return `${s.request.mode ?? 'original'}|${s.grid.h}x${s.grid.w}|T${s.textLen}`;
}

/** Key of samples that can share one VAE run (same latent grid). */
export function decodeGroupKey(s: SampleState): string {
  return `${s.grid.h}x${s.grid.w}`;
}

/** Groups items by key, keeping first-seen order of groups and items. */
export function groupBy<T>(items: readonly T[], key: (t: T) => string): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const g = groups.get(k);
    if (g) g.push(item);
    else groups.set(k, [item]);
  }
  return [...groups.values()];
}

/** Concatenates equally sized per-sample arrays into one batch array `[B, ...]`. */
export function stack(parts: readonly Float32Array[]): Float32Array {
  const each = parts[0]?.length ?? 0;
  const out = new Float32Array(parts.length * each);
  for (const [i, p] of parts.entries()) {
    if (p.length !== each) throw new Error(`stack: part ${i} has ${p.length} values, expected ${each}`);
    out.set(p, i * each);
  }
  return out;
}
