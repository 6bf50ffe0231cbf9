/**
 * @file Seeded starting noise that reproduces PyTorch's CPU `torch.randn`, as diffusers' `randn_tensor` draws FLUX's
 * initial latents: `torch.randn([B, 16, h, w], generator=torch.Generator('cpu').manual_seed(seed), dtype=float32)`,
 * one draw for the whole batch tensor (NCHW order), packed afterwards by the caller.
 *
 * The algorithm is PyTorch's, read from its sources (`CPUGeneratorImpl.cpp`, `core/MT19937RNGEngine.h`,
 * `core/DistributionsHelper.h`, `core/TransformationHelper.h`, `native/cpu/DistributionTemplates.h`):
 * - the generator is an MT19937 seeded with the low 32 bits of the seed;
 * - a float uniform in [0, 1) is `(random32 & (2^24 − 1)) · 2^−24`;
 * - `normal_fill` (float32 tensors of at least 16 contiguous elements) first fills the whole tensor with uniforms,
 *   then runs Box–Muller on each block of 16 pairing j with j+8: `u1 = 1 − x[j]`, `u2 = x[j+8]`,
 *   `r = sqrt(−2·ln u1)`, `θ = 2π·u2`, `x[j] = r·cos θ`, `x[j+8] = r·sin θ`; when the size is not a multiple of 16,
 *   the last 16 elements are redrawn from fresh uniforms and transformed again.
 *
 * Exactness: the uniforms are bit-exact. The transform is done in float32 (`Math.fround` after every operation, as
 * the scalar C++ kernel does), so results equal torch's up to libm float rounding: `logf`/`cosf`/`sinf` of the C
 * library versus V8's double `Math.log`/`cos`/`sin` rounded to float32 may differ by one ulp on rare inputs.
 * PyTorch builds whose CPU capability is AVX2 (`torch.backends.cpu.get_cpu_capability()`) use a vectorised kernel
 * with polynomial log/sincos approximations and a float32 2π instead; those differ from this port by a few ulp.
 * The DEFAULT and AVX512 kernels run the scalar code reproduced here.
 */
import { FluxArgumentError, checkDim } from './latents.ts';
import { MT19937 } from './mt19937.ts';

const f32 = Math.fround;
const MASK24 = 0xffffff;
const TWO_POW_M24 = 2 ** -24;

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
  randn(count: number): Float32Array {
    checkDim('count', count);
    if (count < 16) {
      throw new FluxArgumentError('count', `tensors of fewer than 16 elements are not supported, got ${count}`);
    }
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = this.uniformFloat();
    for (let i = 0; i + 16 <= count; i += 16) boxMuller16(data, i);
    if (count % 16 !== 0) {
      // torch recomputes the tail block from fresh uniforms, overlapping already transformed values.
      const start = count - 16;
      for (let i = 0; i < 16; i++) data[start + i] = this.uniformFloat();
      boxMuller16(data, start);
    }
    return data;
  }
}

/** torch's `normal_fill_16` (mean 0, std 1) on `data[o .. o+16)`, float32 at every step. */
function boxMuller16(data: Float32Array, o: number): void {
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

function checkSeed(param: string, seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new FluxArgumentError(param, `must be a safe integer, got ${seed}`);
}

/**
 * Starting noise `[b, c, h, w]` (NCHW) for a batch drawn from one generator, as diffusers does for a single
 * `torch.Generator` (`torch.randn([b, c, h, w], generator=manual_seed(seed))`).
 */
export function noiseForBatch(seed: number, b: number, c: number, h: number, w: number): Float32Array {
  checkSeed('seed', seed);
  checkDim('b', b);
  checkDim('c', c);
  checkDim('h', h);
  checkDim('w', w);
  return new TorchCpuGenerator(seed).randn(b * c * h * w);
}

/**
 * Starting noise `[seeds.length, c, h, w]` (NCHW) where sample i has its own generator seeded with `seeds[i]`, as
 * diffusers draws it for a list of generators. Sample i equals `noiseForBatch(seeds[i], 1, c, h, w)`, so an image's
 * noise does not depend on which batch it runs in.
 */
export function noiseForSeeds(seeds: readonly number[], c: number, h: number, w: number): Float32Array {
  if (seeds.length === 0) throw new FluxArgumentError('seeds', 'must hold at least one seed');
  seeds.forEach((s, i) => checkSeed(`seeds[${i}]`, s));
  checkDim('c', c);
  checkDim('h', h);
  checkDim('w', w);
  const per = c * h * w;
  const out = new Float32Array(seeds.length * per);
  seeds.forEach((s, i) => out.set(new TorchCpuGenerator(s).randn(per), i * per));
  return out;
}
