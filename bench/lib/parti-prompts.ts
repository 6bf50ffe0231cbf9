/**
 * @file The PartiPrompts subset `bench:quality` and `bench:grid` draw from (bench/data/partiprompts-subset.tsv: the
 * first two prompts of each of the 12 categories of PartiPrompts.tsv, google-research/parti, in file order). A
 * prompt's index in the file is its identity across benchmarks: its seed is 1000 + index.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FluxPipeline, GenerateResult } from '../../src/pipeline/flux/pipeline.ts';
import { REPO } from './modes-report.ts';

/** One prompt of the subset. */
export interface PartiPrompt {
  /** Line index in the subset file (header excluded). */
  index: number;
  prompt: string;
  category: string;
}

/** The subset file, in order. */
export function readPartiPrompts(): PartiPrompt[] {
  const lines = readFileSync(join(REPO, 'bench/data/partiprompts-subset.tsv'), 'utf8').trim().split('\n').slice(1);
  return lines.map((l, index) => {
    const [prompt, category] = l.split('\t') as [string, string];
    return { index, prompt, category };
  });
}

/** The first `n` prompts of each category, in file order. */
export function perCategory(prompts: readonly PartiPrompt[], n: number): PartiPrompt[] {
  const seen = new Map<string, number>();
  return prompts.filter((p) => {
    const k = seen.get(p.category) ?? 0;
    seen.set(p.category, k + 1);
    return k < n;
  });
}

/** A square `size` generation's settings, shared by every mode of one benchmark run. */
export interface PartiRender {
  size: number;
  steps: number;
  textTokens: number;
}

/** `p`'s image in `mode` (seed 1000 + its index), with the wall time of the awaited `generate`. */
export async function renderPartiPrompt(
  pipe: FluxPipeline,
  p: PartiPrompt,
  mode: string,
  r: PartiRender,
): Promise<{ result: GenerateResult; ms: number }> {
  const t0 = performance.now();
  const result = await pipe.generate({
    prompt: p.prompt,
    height: r.size,
    width: r.size,
    steps: r.steps,
    seed: 1000 + p.index,
    maxSequenceLength: r.textTokens,
    mode,
  });
  return { result, ms: performance.now() - t0 };
}
