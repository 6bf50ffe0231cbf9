/** @file The checks every executor makes of a sample request (src/pipeline/sample-checks.ts). */
import { describe, expect, it } from 'vitest';
import type { SampleRequest } from '../../../src/pipeline/executor.ts';
import { FluxArgumentError, InvalidSizeError } from '../../../src/pipeline/flux/latents.ts';
import { checkMode, checkSampleRequest } from '../../../src/pipeline/sample-checks.ts';

const ok: SampleRequest = { prompt: 'a fox', height: 64, width: 96, steps: 4, guidanceScale: 3.5, seed: 7 };

function paramOf(r: Partial<SampleRequest> | Record<string, unknown>): string | undefined {
  try {
    checkSampleRequest({ ...ok, ...r } as SampleRequest, 64);
    return undefined;
  } catch (err) {
    expect(err instanceof FluxArgumentError || err instanceof InvalidSizeError).toBe(true);
    return (err as { param: string }).param;
  }
}

describe('checkSampleRequest', () => {
  it('returns the latent grid of a good request', () => {
    // 64x96 pixels → 8x12 latents → 4x6 = 24 packed tokens.
    expect(checkSampleRequest(ok, 64)).toEqual({ h: 8, w: 12, seqLen: 24 });
    expect(checkSampleRequest({ ...ok, latents: new Float32Array(24 * 64) }, 64).seqLen).toBe(24);
  });

  it('names the first bad field', () => {
    expect(paramOf({ prompt: 3 })).toBe('prompt');
    expect(paramOf({ prompt2: null })).toBe('prompt2');
    expect(paramOf({ steps: 0 })).toBe('steps');
    expect(paramOf({ steps: 1001 })).toBe('steps');
    expect(paramOf({ steps: 2.5 })).toBe('steps');
    expect(paramOf({ guidanceScale: Number.NaN })).toBe('guidanceScale');
    expect(paramOf({ seed: 1.5 })).toBe('seed');
    expect(paramOf({ height: 72 })).toBe('height');
    expect(paramOf({ width: 0 })).toBe('width');
    expect(paramOf({ latents: new Float32Array(10) })).toBe('latents');
  });
});

describe('checkMode', () => {
  it('accepts the default and the modes offered, refuses others naming them', () => {
    expect(() => checkMode(undefined, ['original'])).not.toThrow();
    expect(() => checkMode('XL', ['original', 'XL'])).not.toThrow();
    expect(() => checkMode('S', ['original'])).toThrow(FluxArgumentError);
    expect(() => checkMode('S', ['original', 'XL'])).toThrow('unknown mode "S"; this model has: original, XL');
  });
});
