import { describe, expect, it } from 'vitest';
import { imageIds, textIds } from '../../../../src/pipeline/flux/latents.ts';
import { concatIds, FLUX_DEV_AXES_DIMS, ropeTables } from '../../../../src/pipeline/flux/rope.ts';

/** Straightforward reference: column i belongs to axis a at local index li; frequency index floor(li / 2). */
function naive(ids: number[][], axes: number[], col: number, s: number): [number, number] {
  let a = 0;
  let li = col;
  while (li >= axes[a]!) {
    li -= axes[a]!;
    a++;
  }
  const d = axes[a]!;
  const j = Math.floor(li / 2);
  const angle = ids[s]![a]! * 10000 ** (-(2 * j) / d);
  return [Math.cos(angle), Math.sin(angle)];
}

describe('ropeTables', () => {
  it('matches the straightforward formula on the tiny axes [4, 6, 6]', () => {
    const axes = [4, 6, 6];
    const rows = [
      [0, 0, 0],
      [0, 2, 3],
      [1, 7, 5],
      [0, 31, 17],
    ];
    const t = ropeTables(Float32Array.from(rows.flat()), axes);
    expect(t.seqLen).toBe(4);
    expect(t.dim).toBe(16);
    expect(t.cos.length).toBe(64);
    for (let s = 0; s < rows.length; s++) {
      for (let i = 0; i < 16; i++) {
        const [c, sn] = naive(rows, axes, i, s);
        expect(t.cos[s * 16 + i]).toBeCloseTo(c, 6);
        expect(t.sin[s * 16 + i]).toBeCloseTo(sn, 6);
      }
    }
  });

  it('matches hand-computed values and the interleaved (c0, c0, c1, c1) layout', () => {
    // Token [0, 2, 3] with axes [4, 6, 6]: columns 0-3 axis 0 (position 0), 4-9 rows, 10-15 columns.
    const { cos, sin } = ropeTables(Float32Array.from([0, 2, 3]), [4, 6, 6]);
    expect(Array.from(cos.slice(0, 4))).toEqual([1, 1, 1, 1]);
    expect(Array.from(sin.slice(0, 4))).toEqual([0, 0, 0, 0]);
    expect(cos[4]).toBe(Math.fround(Math.cos(2)));
    expect(cos[5]).toBe(cos[4]);
    expect(sin[4]).toBe(Math.fround(Math.sin(2)));
    const w1 = 1 / 10000 ** (2 / 6);
    expect(cos[6]).toBeCloseTo(Math.cos(2 * w1), 7);
    expect(cos[7]).toBe(cos[6]);
    expect(cos[10]).toBe(Math.fround(Math.cos(3)));
    expect(sin[11]).toBe(Math.fround(Math.sin(3)));
    expect(sin[14]).toBeCloseTo(Math.sin(3 * (1 / 10000 ** (4 / 6))), 7);
  });

  it('puts text tokens first: zero text ids give the identity rotation', () => {
    const T = 5;
    const ids = concatIds(textIds(T), imageIds(4, 6)); // [5 + 2*3, 3]
    const t = ropeTables(ids, FLUX_DEV_AXES_DIMS);
    expect(t.seqLen).toBe(T + 6);
    expect(t.dim).toBe(128);
    for (let i = 0; i < T * 128; i++) {
      expect(t.cos[i]).toBe(1);
      expect(t.sin[i]).toBe(0);
    }
    // First image token is [0, 0, 0]; the last is [0, 1, 2]: its row columns use p=1, column columns p=2.
    const last = (T + 5) * 128;
    expect(t.cos[last + 16]).toBe(Math.fround(Math.cos(1)));
    expect(t.cos[last + 72]).toBe(Math.fround(Math.cos(2)));
    expect(t.sin[last + 127]).toBeCloseTo(Math.sin(2 * 10000 ** (-54 / 56)), 7);
  });

  it('rejects bad axes and ids by name', () => {
    expect(() => ropeTables(new Float32Array(3), [4, 5, 6])).toThrow(/^axesDims:/);
    expect(() => ropeTables(new Float32Array(3), [])).toThrow(/^axesDims:/);
    expect(() => ropeTables(new Float32Array(4), [4, 6, 6])).toThrow(/^ids:/);
    expect(() => ropeTables(new Float32Array(3), [4, 6, 6], 0)).toThrow(/^theta:/);
  });
});
