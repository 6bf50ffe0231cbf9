/**
 * @file The host-side pieces of the control path (src/pipeline/flux/control.ts): pixels to the encoder's [−1, 1]
 * NCHW input, moments to packed control latents, the feature concat, and which requests need / refuse a control
 * image.
 */
import { describe, expect, it } from 'vitest';
import {
  checkControlRequest,
  concatFeatures,
  controlChannelsOf,
  controlLatents,
  controlPixels,
} from '../../../../src/pipeline/flux/control.ts';
import { packLatents } from '../../../../src/pipeline/flux/latents.ts';
import type { ActiveLora } from '../../../../src/pipeline/lora/feeds.ts';
import type { ParsedLora } from '../../../../src/pipeline/lora/types.ts';

const f32 = Math.fround;
const lora = (name: string, inChannels: number): ActiveLora => ({
  name,
  strength: 1,
  lora: { format: 'bfl-control', factors: new Map(), norms: new Map(), inChannels, ignoredKeys: [] } as ParsedLora,
});

describe('controlPixels', () => {
  it('maps bytes to 2·(v/255) − 1 in float32, HWC → NCHW, without resizing a same-size image', async () => {
    const img = { width: 2, height: 1, data: Uint8Array.from([0, 128, 255, 1, 2, 3]) };
    const x = await controlPixels(img, 1, 2);
    const v = (b: number) => f32(2 * f32(b / 255) - 1);
    expect([...x]).toEqual([v(0), v(1), v(128), v(2), v(255), v(3)]); // [1, 3, 1, 2]
  });

  it('resizes to the requested size', async () => {
    const img = { width: 5, height: 3, data: new Uint8Array(45).fill(200) };
    const x = await controlPixels(img, 16, 8);
    expect(x.length).toBe(3 * 16 * 8);
    // A flat image stays flat through Lanczos.
    expect(x.every((p) => Math.abs(p - f32(2 * f32(200 / 255) - 1)) < 1e-6)).toBe(true);
  });

  it('refuses a malformed image naming controlImage', async () => {
    await expect(controlPixels({ width: 2, height: 2, data: new Uint8Array(3) }, 2, 2)).rejects.toMatchObject({
      param: 'controlImage',
      code: 'invalid_image',
    });
  });
});

describe('controlLatents', () => {
  it('samples mean + exp(logvar/2)·ε, then (z − shift)·scaling, and packs', () => {
    const [c, h, w] = [1, 2, 2];
    const mean = Float32Array.of(0.5, -1, 2, 0);
    const logvar = Float32Array.of(0, Math.log(4), -2, 1);
    const eps = Float32Array.of(1, 0.5, -1, 2);
    const out = controlLatents(mean, logvar, eps, c, h, w, 0.3611, 0.1159);
    const z = mean.map((m, i) => (m + Math.exp(logvar[i]! / 2) * eps[i]! - 0.1159) * 0.3611);
    expect(out.length).toBe(4);
    const packed = packLatents(z, 1, c, h, w);
    for (let i = 0; i < 4; i++) expect(out[i]).toBeCloseTo(packed[i]!, 6);
    // Without ε: the distribution's mean.
    const modeOut = controlLatents(mean, logvar, undefined, c, h, w, 0.3611, 0.1159);
    expect(modeOut[0]).toBeCloseTo((0.5 - 0.1159) * 0.3611, 6);
  });
});

describe('concatFeatures', () => {
  it('interleaves per token: [L, a] + [L, b] → [L, a + b]', () => {
    const out = concatFeatures(Float32Array.of(1, 2, 3, 4), Float32Array.of(9, 8), 2);
    expect([...out]).toEqual([1, 2, 9, 3, 4, 8]);
  });
});

describe('control requests', () => {
  it('a set needs 64 extra channels exactly when it holds a 128-channel LoRA', () => {
    expect(controlChannelsOf([], 64)).toBe(0);
    expect(controlChannelsOf([lora('plain', 64)], 64)).toBe(0);
    expect(controlChannelsOf([lora('plain', 64), lora('canny', 128)], 64)).toBe(64);
    expect(() => controlChannelsOf([lora('odd', 96)], 64)).toThrow(
      expect.objectContaining({ name: 'LoraError', code: 'unsupported', lora: 'odd' }),
    );
  });

  it('needs a control image with a control LoRA and refuses one without', () => {
    const img = { width: 1, height: 1, data: new Uint8Array(3) };
    expect(() => checkControlRequest(undefined, 64)).toThrow(
      expect.objectContaining({ param: 'controlImage', code: 'missing' }),
    );
    expect(() => checkControlRequest(img, 0)).toThrow(
      expect.objectContaining({ param: 'controlImage', code: 'unexpected' }),
    );
    expect(() => checkControlRequest(img, 64)).not.toThrow();
    expect(() => checkControlRequest(undefined, 0)).not.toThrow();
  });
});
