import { describe, expect, it } from 'vitest';
import {
  bf16ToF32,
  bytesToF32,
  f16ToF32,
  f32BitsToF16Bits,
  f32ToBf16,
  f32ToF16,
  fp8E4M3ToF32,
  fp8E5M2ToF32,
} from '../../../../src/shared/weights/dtype.ts';

/** All 16-bit patterns that are not NaN in a format with `expMask`/`mantMask` in the low 15 bits. */
function nonNanPatterns(expMask: number, mantMask: number): Uint16Array {
  const out: number[] = [];
  for (let h = 0; h < 65536; h++) if ((h & expMask) !== expMask || (h & mantMask) === 0) out.push(h);
  return Uint16Array.from(out);
}

/** Deterministic pseudo-random float32 bit patterns (xorshift), for property tests. */
function randomBits(n: number, seed: number): Uint32Array {
  const out = new Uint32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s;
  }
  return out;
}

function f32FromBits(bits: number): number {
  return new Float32Array(Uint32Array.of(bits).buffer)[0]!;
}

describe('bf16', () => {
  it('widens and re-rounds every non-NaN bf16 value to itself', () => {
    const h = nonNanPatterns(0x7f80, 0x007f);
    expect(Array.from(f32ToBf16(bf16ToF32(h)))).toEqual(Array.from(h));
    expect(bf16ToF32(Uint16Array.of(0x3f80, 0xc000, 0x7f80))).toEqual(Float32Array.of(1, -2, Infinity));
  });

  it('rounds to nearest, ties to even', () => {
    // 0x3f808000 lies exactly between bf16 0x3f80 (even) and 0x3f81; 0x3f818000 between 0x3f81 and 0x3f82 (even).
    const x = Uint32Array.of(0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, 0xbf808000, 0x7f7fffff);
    expect(Array.from(f32ToBf16(new Float32Array(x.buffer)))).toEqual([0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xbf80, 0x7f80]);
  });

  it('picks the nearer neighbour for random float32 values', () => {
    // Exponents below 254 keep both neighbours finite (overflow to ∞ is covered above).
    const bits = randomBits(20000, 1).map((u) => (u & 0x807fffff) | ((((u >>> 23) & 0xff) % 254) << 23));
    const src = new Float32Array(bits.buffer);
    const out = f32ToBf16(src);
    const bad: number[] = [];
    for (let i = 0; i < src.length; i++) {
      const x = Math.abs(src[i]!);
      const lo = Math.abs(f32FromBits((bits[i]! >>> 16) << 16));
      const hi = Math.abs(f32FromBits(((bits[i]! >>> 16) + 1) << 16));
      const got = Math.abs(f32FromBits(out[i]! << 16));
      const want = x - lo < hi - x ? lo : hi - x < x - lo ? hi : ((bits[i]! >>> 16) & 1) === 0 ? lo : hi;
      // Collect instead of expect() per element: 20k assertions are slow.
      if (got !== want) bad.push(src[i]!);
    }
    expect(bad).toEqual([]);
  });

  it('keeps NaN a NaN', () => {
    const nan = new Float32Array(Uint32Array.of(0x7f800001, 0xffc00000).buffer);
    expect(Array.from(bf16ToF32(f32ToBf16(nan))).every(Number.isNaN)).toBe(true);
  });
});

describe('f16', () => {
  it('widens known values exactly', () => {
    const h = Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x7c00, 0xfc00, 0x8000);
    expect(Array.from(f16ToF32(h))).toEqual([1, -2, 65504, 2 ** -24, 2 ** -14, Infinity, -Infinity, -0]);
    expect(Number.isNaN(f16ToF32(Uint16Array.of(0x7e00))[0])).toBe(true);
  });

  it('widens and re-rounds every non-NaN f16 value to itself', () => {
    const h = nonNanPatterns(0x7c00, 0x03ff);
    expect(Array.from(f32ToF16(f16ToF32(h)))).toEqual(Array.from(h));
  });

  it('rounds to nearest even, including subnormals and overflow', () => {
    const x = Float32Array.of(
      0.1,
      65519,
      65520,
      1e6,
      2 ** -25,
      1.5 * 2 ** -25,
      2 ** -26,
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
    );
    // 1 + 2^-11 is half-way between 1 (0x3c00, even) and 0x3c01; 1 + 3·2^-11 between 0x3c01 and 0x3c02 (even).
    expect(Array.from(f32ToF16(x))).toEqual([0x2e66, 0x7bff, 0x7c00, 0x7c00, 0x0000, 0x0001, 0x0000, 0x3c00, 0x3c02]);
    expect(f32BitsToF16Bits(0x7fc00000) & 0x7e00).toBe(0x7e00);
  });

  it('picks the nearer neighbour for random values in f16 range', () => {
    const table = f16ToF32(Uint16Array.from({ length: 0x7c00 }, (_, i) => i));
    const bits = randomBits(20000, 7).map((u) => (u & 0x807fffff) | (((((u >>> 23) & 0xff) % 32) + 100) << 23));
    const src = new Float32Array(bits.buffer);
    const out = f32ToF16(src);
    const bad: number[] = [];
    for (let i = 0; i < src.length; i++) {
      const x = Math.abs(src[i]!);
      const h = out[i]! & 0x7fff;
      const err = Math.abs(table[h]! - x);
      for (const nb of [h - 1, h + 1]) {
        if (nb < 0 || nb >= 0x7c00) continue;
        const e = Math.abs(table[nb]! - x);
        if (!(err < e || (err === e && (h & 1) === 0))) bad.push(src[i]!);
      }
    }
    expect(bad).toEqual([]);
  });
});

describe('fp8', () => {
  it('decodes E4M3 (fn): bias 7, max 448, no infinities', () => {
    const v = fp8E4M3ToF32(Uint8Array.of(0x00, 0x01, 0x08, 0x38, 0xb8, 0x77, 0x7e, 0x7f, 0xff, 0x78));
    expect(Array.from(v.subarray(0, 7))).toEqual([0, 2 ** -9, 2 ** -6, 1, -1, 240, 448]);
    expect(Number.isNaN(v[7]) && Number.isNaN(v[8])).toBe(true);
    expect(v[9]).toBe(256);
  });

  it('decodes E5M2: bias 15, infinities and NaNs', () => {
    const v = fp8E5M2ToF32(Uint8Array.of(0x3c, 0xbc, 0x7b, 0x7c, 0xfc, 0x01, 0x04, 0x7d));
    expect(Array.from(v.subarray(0, 7))).toEqual([1, -1, 57344, Infinity, -Infinity, 2 ** -16, 2 ** -14]);
    expect(Number.isNaN(v[7])).toBe(true);
  });
});

describe('bytesToF32', () => {
  it('reads unaligned F32 bytes and widens BF16/F64', () => {
    const data = Float32Array.of(1.5, -2.25, 3);
    const shifted = new Uint8Array(13);
    shifted.set(new Uint8Array(data.buffer), 1);
    expect(bytesToF32('F32', shifted.subarray(1))).toEqual(data);
    const bf = f32ToBf16(data);
    expect(bytesToF32('BF16', new Uint8Array(bf.buffer))).toEqual(data);
    expect(bytesToF32('F64', new Uint8Array(Float64Array.of(1.5, -2.25, 3).buffer))).toEqual(data);
    expect(() => bytesToF32('F32', new Uint8Array(5))).toThrow(RangeError);
  });
});
