/**
 * @file The LoRA set rules every layer shares (src/pipeline/lora/selection.ts): file names, the strength rule and
 * the set key.
 */
import { describe, expect, it } from 'vitest';
import {
  loraFileName,
  loraSetKey,
  loraStrengthProblem,
  MAX_LORA_STRENGTH,
  sortedLoraSet,
} from '../../../../src/pipeline/lora/selection.ts';

const sel = (name: string, strength = 1) => ({ name, strength });

describe('loraFileName', () => {
  it('appends the extension once', () => {
    expect(loraFileName('style')).toBe('style.safetensors');
    expect(loraFileName('style.safetensors')).toBe('style.safetensors');
    expect(loraFileName('dir/a')).toBe('dir/a.safetensors');
  });
});

describe('loraStrengthProblem', () => {
  it('accepts finite strengths within the bound, both signs', () => {
    for (const s of [0, 1, -1, 0.25, MAX_LORA_STRENGTH, -MAX_LORA_STRENGTH])
      expect(loraStrengthProblem(s)).toBeUndefined();
  });

  it('names what is wrong', () => {
    expect(loraStrengthProblem(Number.NaN)).toBe('strength must be a finite number, got NaN');
    expect(loraStrengthProblem(Number.POSITIVE_INFINITY)).toMatch(/finite number/);
    expect(loraStrengthProblem('1')).toMatch(/finite number/);
    expect(loraStrengthProblem(MAX_LORA_STRENGTH + 0.5)).toBe(`strength must be at most ${MAX_LORA_STRENGTH}`);
    expect(loraStrengthProblem(-MAX_LORA_STRENGTH - 1)).toBe(`strength must be at least -${MAX_LORA_STRENGTH}`);
  });
});

describe('loraSetKey', () => {
  it('is "-" for no set and tells names, strengths and order apart', () => {
    expect(loraSetKey(undefined)).toBe('-');
    expect(loraSetKey([])).toBe('-');
    const ab = loraSetKey([sel('a'), sel('b')]);
    expect(ab).toBe(loraSetKey([sel('a'), sel('b')]));
    expect(ab).not.toBe(loraSetKey([sel('b'), sel('a')]));
    expect(loraSetKey([sel('a', 0.5)])).not.toBe(loraSetKey([sel('a')]));
  });

  it('cannot be fooled by separators inside names', () => {
    expect(loraSetKey([sel('a:1,b')])).not.toBe(loraSetKey([sel('a'), sel('b')]));
    expect(loraSetKey([sel('a@1')])).not.toBe(loraSetKey([sel('a', 1)]));
  });

  it('is order-free after sortedLoraSet, which leaves its input alone', () => {
    const set = [sel('b'), sel('a', 2), sel('a', 1)];
    expect(loraSetKey(sortedLoraSet(set))).toBe(loraSetKey(sortedLoraSet([sel('a', 1), sel('a', 2), sel('b')])));
    expect(set.map((s) => s.name)).toEqual(['b', 'a', 'a']);
  });
});
