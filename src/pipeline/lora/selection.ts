/**
 * @file The rules of a LoRA set, in one place for every layer: how a LoRA is named (its file name in LORA_DIR),
 * which strengths are allowed, and the key that tells two sets apart. The service validates requests with these
 * rules, the set manager enforces them again for direct pipeline callers, and the batcher, the pipeline's grouping
 * and the feed cache key sets the same way.
 */
import type { LoraSelection } from './types.ts';

/** The file extension of LoRA files; a name without it gets it appended. */
export const LORA_EXTENSION = '.safetensors';
/** Largest |strength| of a LoRA (beyond it the delta swamps the base weights). */
export const MAX_LORA_STRENGTH = 10;

/** A LoRA name as the LoRA layer files it: `style` and `style.safetensors` are one file. */
export function loraFileName(name: string): string {
  return name.endsWith(LORA_EXTENSION) ? name : `${name}${LORA_EXTENSION}`;
}

/** What is wrong with a strength (`strength must …`), or undefined when it is allowed. */
export function loraStrengthProblem(strength: unknown): string | undefined {
  if (typeof strength !== 'number' || !Number.isFinite(strength)) {
    return `strength must be a finite number, got ${strength}`;
  }
  if (strength < -MAX_LORA_STRENGTH) return `strength must be at least -${MAX_LORA_STRENGTH}`;
  if (strength > MAX_LORA_STRENGTH) return `strength must be at most ${MAX_LORA_STRENGTH}`;
  return undefined;
}

/**
 * The key of a LoRA set: equal exactly when the sets hold the same names with the same strengths in the same order
 * (the order fixes the rank-concatenation order of the feeds). `-` for no LoRA. Callers that may merge sets in any
 * order sort them first ({@link sortedLoraSet}).
 */
export function loraSetKey(set: readonly LoraSelection[] | undefined): string {
  return set && set.length > 0 ? JSON.stringify(set.map((l) => [l.name, l.strength])) : '-';
}

/** The set ordered by name (then strength), for keys that must not depend on the order a client listed it in. */
export function sortedLoraSet(set: readonly LoraSelection[]): LoraSelection[] {
  return [...set].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.strength - b.strength));
}
