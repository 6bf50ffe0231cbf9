/**
 * @file The PartiPrompts subset `bench:quality` and `bench:grid` draw from (bench/data/partiprompts-subset.tsv: the
 * first two prompts of each of the 12 categories of PartiPrompts.tsv, google-research/parti, in file order). A
 * prompt's index in the file is its identity across benchmarks: its seed is 1000 + index.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
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
