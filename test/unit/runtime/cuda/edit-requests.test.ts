/**
 * The CUDA engine's editing frames (engines/cuda/PROTOCOL.md: `encode`, `prepare` with `true_cfg` / `inpaint`) as
 * bytes, without a GPU: payload parts in the documented order and sizes, and a RangeError for a length that does
 * not match the shape (the engine would refuse it with an error frame).
 */
import { describe, expect, it } from 'vitest';
import { editPrepareFrameOf, encodeFrame, encodeFrameOf, FrameDecoder } from '../../../../src/runtime/cuda/index.ts';

const roundTrip = (f: { header: Record<string, unknown>; payload: ArrayBufferView[] }) =>
  new FrameDecoder().push(encodeFrame({ ...f.header, id: 1, op: String(f.header.op) }, f.payload))[0]!;

describe('CUDA edit frames', () => {
  it('encode: pixels [B, 3, H, W] then eps [B, 16, H/8, W/8], float32', () => {
    const pixels = Float32Array.from({ length: 2 * 3 * 32 * 48 }, (_, i) => (i % 255) / 127 - 1);
    const eps = Float32Array.from({ length: 2 * 16 * 4 * 6 }, (_, i) => Math.sin(i));
    const fr = roundTrip(encodeFrameOf({ batch: 2, height: 32, width: 48, pixels, eps }));
    expect(fr.header).toMatchObject({
      op: 'encode',
      batch: 2,
      height: 32,
      width: 48,
      noise: 'payload',
      output: 'latents',
    });
    expect(fr.payload.byteLength).toBe(4 * (pixels.length + eps.length));
    expect(new Float32Array(fr.payload.slice(4 * pixels.length).buffer)).toEqual(eps);
    const moments = roundTrip(encodeFrameOf({ batch: 2, height: 32, width: 48, pixels }, 'moments'));
    expect(moments.header).toMatchObject({ noise: 'none', output: 'moments' });
    expect(moments.payload.byteLength).toBe(4 * pixels.length);
  });

  it('prepare: 2B id rows with true_cfg; latents then image latents, noise, mask with inpaint', () => {
    const t5Len = 8;
    const n = 2 * 4 * 64; // B 2, 32x32 -> 4 tokens
    const lat = (v: number) => new Float32Array(n).fill(v);
    const fr = roundTrip(
      editPrepareFrameOf({
        batch: 2,
        height: 32,
        width: 32,
        clipIds: new Int32Array(4 * 77),
        t5Ids: new Int32Array(4 * t5Len),
        t5Len,
        sigmas: [1, 0.5, 0],
        guidance: [3.5, 3.5],
        latents: lat(1),
        trueCfg: [2, 4],
        inpaint: { imageLatents: lat(2), noise: lat(3), mask: lat(4) },
      }),
    );
    expect(fr.header).toMatchObject({ op: 'prepare', batch: 2, true_cfg: [2, 4], inpaint: true, latents: 'payload' });
    const ids = 4 * 4 * (77 + t5Len);
    expect(fr.payload.byteLength).toBe(ids + 4 * 4 * n);
    const vals = new Float32Array(fr.payload.slice(ids).buffer);
    expect([vals[0], vals[n], vals[2 * n], vals[3 * n]]).toEqual([1, 2, 3, 4]);
  });

  it('refuses lengths that do not match the shape', () => {
    const pixels = new Float32Array(3 * 32 * 32);
    expect(() => encodeFrameOf({ batch: 2, height: 32, width: 32, pixels })).toThrow(RangeError);
    expect(() => encodeFrameOf({ batch: 1, height: 32, width: 32, pixels, eps: new Float32Array(3) })).toThrow(
      /eps must hold 256/,
    );
    const args = {
      batch: 1,
      height: 32,
      width: 32,
      clipIds: new Int32Array(77),
      t5Ids: new Int32Array(8),
      t5Len: 8,
      sigmas: [1, 0],
      guidance: [3.5],
      latents: new Float32Array(4 * 64),
    };
    expect(() => editPrepareFrameOf({ ...args, trueCfg: [2] })).toThrow(/clip ids must be \[2, 77\]/);
    expect(() => editPrepareFrameOf({ ...args, trueCfg: [2, 3] })).toThrow(/true_cfg must hold 1/);
    const bad = new Float32Array(5);
    expect(() => editPrepareFrameOf({ ...args, inpaint: { imageLatents: bad, noise: bad, mask: bad } })).toThrow(
      /image latents must hold 256/,
    );
  });
});
