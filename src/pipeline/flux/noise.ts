/**
 * @file Seeded starting noise that reproduces PyTorch's CPU `torch.randn`, as diffusers' `randn_tensor` draws FLUX's
 * initial latents: `torch.randn([B, 16, h, w], generator=torch.Generator('cpu').manual_seed(seed), dtype=float32)`,
 * one draw for the whole batch tensor (NCHW order), packed afterwards by the caller.
 *
 * The algorithm is PyTorch's, read from its sources (`CPUGeneratorImpl.cpp`, `core/MT19937RNGEngine.h`,
 * `core/DistributionsHelper.h`, `core/TransformationHelper.h`, `native/cpu/DistributionTemplates.h`,
 * `native/cpu/avx_mathfun.h`):
 * - the generator is an MT19937 seeded with the low 32 bits of the seed;
 * - a float uniform in [0, 1) is `(random32 & (2^24 − 1)) · 2^−24`;
 * - `normal_fill` (float32 tensors of at least 16 contiguous elements) first fills the whole tensor with uniforms,
 *   then runs Box–Muller on each block of 16 pairing j with j+8: `u1 = 1 − x[j]`, `u2 = x[j+8]`,
 *   `r = sqrt(−2·ln u1)`, `θ = 2π·u2`, `x[j] = r·cos θ`, `x[j+8] = r·sin θ`; when the size is not a multiple of 16,
 *   the last 16 elements are redrawn from fresh uniforms and transformed again.
 *
 * Two kernels exist in torch and differ in the last bits, so both are ported:
 * - `'vectorized'` (default): x86 builds whose CPU capability is AVX2 or AVX512 (`torch.backends.cpu.
 *   get_cpu_capability()`, the usual case on Linux servers). It uses the Cephes-style float32 polynomials of
 *   avx_mathfun.h for ln and sincos, a float32 2π, and fused multiply-adds wherever GCC contracted a product into the add that consumes it (which
 *   sites are fused was settled against torch's output). Matched bit for bit against torch 2.11 on 530k values.
 * - `'scalar'`: the capability DEFAULT (e.g. `ATEN_CPU_CAPABILITY=default`, non-x86 builds), which calls the C
 *   library's `logf`/`cosf`/`sinf`. Here V8's double `Math.log`/`cos`/`sin` rounded to float32 stand in for them,
 *   so exact equality with torch is up to libm float rounding: about 1.6% of values differ by one ulp.
 * The uniforms, and hence any parity, also need the exact float32 rounding of every step (`Math.fround`).
 */
import { checkDim, FluxArgumentError } from './latents.ts';
import { MT19937 } from './mt19937.ts';

const f32 = Math.fround;
const MASK24 = 0xffffff;
const TWO_POW_M24 = 2 ** -24;

/** Which torch CPU kernel to reproduce; see the file header. */
export type RandnKernel = 'vectorized' | 'scalar';

/** A port of PyTorch's CPU generator, enough to draw float32 uniforms and normals. */
export class TorchCpuGenerator {
  readonly #engine: MT19937;

  /** Equivalent of `torch.Generator('cpu').manual_seed(seed)`. */
  constructor(seed: number) {
    checkSeed('seed', seed);
    this.#engine = new MT19937(seed);
  }

  /** The next raw uint32 (torch's `random()`). */
  random(): number {
    return this.#engine.nextUint32();
  }

  /** A float32 uniform in [0, 1) from the low 24 bits of one uint32 (torch's `uniform_real_distribution<float>`). */
  uniformFloat(): number {
    return (this.#engine.nextUint32() & MASK24) * TWO_POW_M24;
  }

  /**
   * `count` standard normals as `torch.randn(count)` draws them into a contiguous float32 tensor with this generator;
   * consecutive calls continue the stream as consecutive torch calls would.
   * @throws FluxArgumentError for fewer than 16 elements (torch then uses a different, double-precision path).
   */
  randn(count: number, kernel: RandnKernel = 'vectorized'): Float32Array {
    checkDim('count', count);
    if (count < 16) {
      throw new FluxArgumentError('count', `tensors of fewer than 16 elements are not supported, got ${count}`);
    }
    const block = kernel === 'scalar' ? boxMuller16Scalar : boxMuller16Vectorized;
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = this.uniformFloat();
    for (let i = 0; i + 16 <= count; i += 16) block(data, i);
    if (count % 16 !== 0) {
      // torch recomputes the tail block from fresh uniforms, overlapping already transformed values.
      const start = count - 16;
      for (let i = 0; i < 16; i++) data[start + i] = this.uniformFloat();
      block(data, start);
    }
    return data;
  }
}

/** torch's scalar `normal_fill_16` (mean 0, std 1) on `data[o .. o+16)`, float32 at every step. */
function boxMuller16Scalar(data: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - data[o + j]!); // [0, 1) → (0, 1] so the log is finite
    const u2 = data[o + j + 8]!;
    const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(u1)))));
    // `2.0f * c10::pi<double> * u2` is evaluated in double, then stored as float.
    const theta = f32(2 * Math.PI * u2);
    data[o + j] = radius * f32(Math.cos(theta));
    data[o + j + 8] = radius * f32(Math.sin(theta));
  }
}

const TWO_PI_F = f32(2 * Math.PI);

/** torch's `normal_fill_16_AVX2` (mean 0, std 1), one lane at a time. */
function boxMuller16Vectorized(data: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = f32(1 - data[o + j]!);
    const u2 = data[o + j + 8]!;
    const radius = f32(Math.sqrt(f32(-2 * logApprox(u1))));
    sincosApprox(f32(TWO_PI_F * u2));
    data[o + j] = radius * sincosOut[1]!;
    data[o + j + 8] = radius * sincosOut[0]!;
  }
}

/**
 * Fused multiply-add of float32 operands (the `a·b + c` sites of the kernel that GCC compiled to FMA): the product of two float32 values is exact in a double, so one double add
 * and one rounding to float32 give the fused result (barring a double-rounding tie, which these inputs do not hit).
 */
function fma32(a: number, b: number, c: number): number {
  return f32(a * b + c);
}

const bitsView = new DataView(new ArrayBuffer(4));
const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
const SQRT_HALF = f32(Math.SQRT1_2);
const LOG_Q1 = f32(-2.1219444e-4);
const LOG_Q2 = f32(0.693359375);

/** Cephes-style float32 ln for normal positive x (avx_mathfun `log256_ps`, one lane). */
function logApprox(x0: number): number {
  bitsView.setFloat32(0, x0);
  const bits = bitsView.getUint32(0);
  // Split x = m·2^e with m in [0.5, 1): exponent from the bits, mantissa with the exponent of 0.5.
  let e = (bits >>> 23) - 127 + 1;
  bitsView.setUint32(0, (bits & 0x807fffff) | 0x3f000000);
  let x = bitsView.getFloat32(0);
  if (x < SQRT_HALF) {
    e -= 1;
    x = f32(f32(x - 1) + x);
  } else {
    x = f32(x - 1);
  }
  const z = f32(x * x);
  let y = LOG_P[0]!;
  for (let i = 1; i < LOG_P.length; i++) y = fma32(y, x, LOG_P[i]!);
  y = f32(y * x);
  y = fma32(y, z, f32(e * LOG_Q1));
  y = f32(y - f32(z * 0.5));
  x = f32(x + y);
  return f32(f32(e * LOG_Q2) + x);
}

const FOUR_OVER_PI = f32(1.27323954473516);
const DP1 = f32(-0.78515625);
const DP2 = f32(-2.4187564849853516e-4);
const DP3 = f32(-3.774894977445941e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
/** `[sin, cos]` of the last {@link sincosApprox} call (avoids allocating a pair per value). */
const sincosOut = new Float64Array(2);

/** Cephes-style float32 sin and cos for x ≥ 0 (avx_mathfun `sincos256_ps`, one lane); writes {@link sincosOut}. */
function sincosApprox(x0: number): void {
  let x = Math.abs(x0);
  // Octant j (rounded up to even) and the reduced argument x − j·π/4 in three float32 parts.
  const j = (Math.trunc(f32(x * FOUR_OVER_PI)) + 1) & ~1;
  x = fma32(j, DP1, x);
  x = fma32(j, DP2, x);
  x = fma32(j, DP3, x);
  const z = f32(x * x);
  let c = fma32(COS_P[0]!, z, COS_P[1]!);
  c = fma32(c, z, COS_P[2]!);
  c = f32(c * z);
  c = fma32(c, z, -f32(z * 0.5));
  c = f32(c + 1);
  let s = fma32(SIN_P[0]!, z, SIN_P[1]!);
  s = fma32(s, z, SIN_P[2]!);
  s = f32(s * z);
  s = fma32(s, x, x);
  // Octants 2 and 6 (mod 8) swap the polynomials; the sign flips follow Cephes.
  const swap = (j & 2) !== 0;
  const sinV = swap ? c : s;
  const cosV = swap ? s : c;
  sincosOut[0] = j & 4 ? -sinV : sinV;
  sincosOut[1] = ~(j - 2) & 4 ? -cosV : cosV;
}

function checkSeed(param: string, seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new FluxArgumentError(param, `must be a safe integer, got ${seed}`);
}

/**
 * Starting noise `[b, c, h, w]` (NCHW) for a batch drawn from one generator, as diffusers does for a single
 * `torch.Generator` (`torch.randn([b, c, h, w], generator=manual_seed(seed))`).
 */
export function noiseForBatch(
  seed: number,
  b: number,
  c: number,
  h: number,
  w: number,
  kernel: RandnKernel = 'vectorized',
): Float32Array {
  checkSeed('seed', seed);
  checkDim('b', b);
  checkDim('c', c);
  checkDim('h', h);
  checkDim('w', w);
  return new TorchCpuGenerator(seed).randn(b * c * h * w, kernel);
}

/**
 * Starting noise `[seeds.length, c, h, w]` (NCHW) where sample i has its own generator seeded with `seeds[i]`, as
 * diffusers draws it for a list of generators. Sample i equals `noiseForBatch(seeds[i], 1, c, h, w)`, so an image's
 * noise does not depend on which batch it runs in.
 */
export function noiseForSeeds(
  seeds: readonly number[],
  c: number,
  h: number,
  w: number,
  kernel: RandnKernel = 'vectorized',
): Float32Array {
  if (seeds.length === 0) throw new FluxArgumentError('seeds', 'must hold at least one seed');
  for (const [i, s] of seeds.entries()) checkSeed(`seeds[${i}]`, s);
  checkDim('c', c);
  checkDim('h', h);
  checkDim('w', w);
  const per = c * h * w;
  const out = new Float32Array(seeds.length * per);
  for (const [i, s] of seeds.entries()) out.set(new TorchCpuGenerator(s).randn(per, kernel), i * per);
  return out;
}
