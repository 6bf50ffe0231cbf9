/**
 * @file Safetensors dtypes and the float conversions the loader needs: bf16 ↔ f32, f16 ↔ f32 and fp8 → f32.
 *
 * These loops run over every element of a real checkpoint (12 B for the FLUX.1-dev transformer), so they work on
 * integer views of the bits and use lookup tables where the input has at most 16 bits; there is no per-element
 * allocation or DataView call. All views assume a little-endian host, as safetensors data is little-endian.
 */

/** Element types a safetensors header may name (the subset of the format's list this loader understands). */
export type DType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL';

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
});

/** Float dtypes that {@link bytesToF32} can widen to float32. */
export type FloatDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2';

/** Whether `s` is a dtype this loader understands. */
export function isDType(s: string): s is DType {
  return Object.hasOwn(DTYPE_BYTES, s);
}

/** Whether `d` is a float dtype (convertible to float32). */
export function isFloatDType(d: DType): d is FloatDType {
  return d === 'F64' || d === 'F32' || d === 'F16' || d === 'BF16' || d === 'F8_E4M3' || d === 'F8_E5M2';
}

// ---------------------------------------------------------------------------------------------------------------
// bf16: the top 16 bits of an IEEE float32.

/** Widens bf16 bit patterns to float32 (exact: bf16 is a truncated f32). */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  const n = src.length;
  for (let i = 0; i < n; i++) out[i] = src[i]! << 16;
  return dst;
}

/** Rounds float32 values to bf16 bit patterns, round-to-nearest-even; NaN stays a (quiet) NaN. */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) {
    const u = bits[i]!;
    if ((u & 0x7fffffff) > 0x7f800000) {
      // NaN: keep the sign and force a mantissa bit so truncation cannot turn it into infinity.
      dst[i] = (u >>> 16) | 0x40;
    } else {
      // Adding 0x7fff plus the lowest kept bit rounds half-way cases to the even neighbour; a carry into the
      // exponent is the correct result (it may become infinity).
      dst[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    }
  }
  return dst;
}

// ---------------------------------------------------------------------------------------------------------------
// f16: IEEE half precision (1 sign, 5 exponent, 10 mantissa bits).

function halfBitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero and subnormals
  if (exp === 0x1f) return mant ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

let f16Table: Float32Array | undefined;

/** All 65536 half values, built once: a table lookup beats bit twiddling per element in JS. */
function halfTable(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = halfBitsToNumber(h);
  }
  return f16Table;
}

/** Widens f16 bit patterns to float32 (exact). */
export function f16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const table = halfTable();
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = table[src[i]!]!;
  return dst;
}

/** Rounds one float32 bit pattern to an f16 bit pattern, round-to-nearest-even, with subnormals and overflow to ∞. */
export function f32BitsToF16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15; // re-biased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Result is subnormal (or zero): shift the mantissa, implicit bit included, down to the 2^-24 grid.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, which is the right answer (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/** Rounds float32 values to f16 bit patterns, round-to-nearest-even. */
export function f32ToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = f32BitsToF16Bits(bits[i]!);
  return dst;
}

// ---------------------------------------------------------------------------------------------------------------
// fp8 (decode only): E4M3 is the "fn" variant (bias 7, no infinities, only S.1111.111 is NaN, max 448);
// E5M2 is IEEE-like (bias 15, infinities and NaNs at exponent 31).

function buildFp8Table(expBits: number, mantBits: number, ieeeSpecials: boolean): Float32Array {
  const table = new Float32Array(256);
  const bias = (1 << (expBits - 1)) - 1;
  const maxExp = (1 << expBits) - 1;
  const mantMax = 1 << mantBits;
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >>> mantBits) & maxExp;
    const mant = b & (mantMax - 1);
    let v: number;
    if (exp === 0) v = (mant / mantMax) * 2 ** (1 - bias);
    else if (ieeeSpecials && exp === maxExp) v = mant ? Number.NaN : Number.POSITIVE_INFINITY;
    else if (!ieeeSpecials && exp === maxExp && mant === mantMax - 1) v = Number.NaN;
    else v = (1 + mant / mantMax) * 2 ** (exp - bias);
    table[b] = sign * v;
  }
  return table;
}

const FP8_E4M3_TABLE = buildFp8Table(4, 3, false);
const FP8_E5M2_TABLE = buildFp8Table(5, 2, true);

/** Decodes fp8 E4M3 (float8_e4m3fn) bytes to float32. */
export function fp8E4M3ToF32(src: Uint8Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = FP8_E4M3_TABLE[src[i]!]!;
  return dst;
}

/** Decodes fp8 E5M2 (float8_e5m2) bytes to float32. */
export function fp8E5M2ToF32(src: Uint8Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = FP8_E5M2_TABLE[src[i]!]!;
  return dst;
}

// ---------------------------------------------------------------------------------------------------------------

/** An aligned copy of `bytes` when its offset is not a multiple of `align` (typed-array views require it). */
function aligned(bytes: Uint8Array, align: number): Uint8Array {
  if (bytes.byteOffset % align === 0) return bytes;
  return new Uint8Array(bytes);
}

/**
 * Widens the raw little-endian bytes of a float tensor to float32. F32 input is returned as a view when the bytes
 * are aligned (no copy); every other dtype allocates the result.
 *
 * @throws RangeError when `bytes.byteLength` is not a multiple of the element size.
 */
export function bytesToF32(dtype: FloatDType, bytes: Uint8Array): Float32Array {
  const size = DTYPE_BYTES[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  }
  const n = bytes.byteLength / size;
  const b = aligned(bytes, size);
  switch (dtype) {
    case 'F32':
      return new Float32Array(b.buffer, b.byteOffset, n);
    case 'BF16':
      return bf16ToF32(new Uint16Array(b.buffer, b.byteOffset, n));
    case 'F16':
      return f16ToF32(new Uint16Array(b.buffer, b.byteOffset, n));
    case 'F64':
      return Float32Array.from(new Float64Array(b.buffer, b.byteOffset, n));
    case 'F8_E4M3':
      return fp8E4M3ToF32(b);
    case 'F8_E5M2':
      return fp8E5M2ToF32(b);
  }
}

/** Encodes float32 values as the raw little-endian bytes of `dtype` (F32 as-is, F16/BF16 rounded to nearest even). */
export function f32ToBytes(dtype: 'F32' | 'F16' | 'BF16', data: Float32Array): Uint8Array {
  switch (dtype) {
    case 'F32':
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    case 'F16': {
      const h = f32ToF16(data);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
    case 'BF16': {
      const h = f32ToBf16(data);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
  }
}
