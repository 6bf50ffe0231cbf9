/**
 * @file The 32-bit Mersenne Twister (MT19937, Matsumoto & Nishimura 1998), the engine behind PyTorch's CPU
 * generator (`at::mt19937`). Standard parameters: n = 624, m = 397, matrix 0x9908b0df, tempering masks 0x9d2c5680
 * and 0xefc60000, state initialised with multiplier 1812433253. Its output equals C++ `std::mt19937`.
 */

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER = 0x80000000;
const LOWER = 0x7fffffff;

/** A Mersenne Twister stream of uint32 values. */
export class MT19937 {
  readonly #state = new Uint32Array(N);
  #index = N;

  /**
   * @param seed any safe integer; as in PyTorch (`init_with_uint32`), only its low 32 bits are used, so negative
   * seeds wrap modulo 2^32 exactly as torch wraps them through uint64.
   */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed: must be a safe integer, got ${seed}`);
    const mt = this.#state;
    // ToUint32 is exact reduction modulo 2^32 for any integral Number.
    mt[0] = seed >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1]!;
      mt[i] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + i) >>> 0;
    }
  }

  /** Regenerates the 624-word block. */
  #twist(): void {
    const mt = this.#state;
    for (let i = 0; i < N; i++) {
      const y = (mt[i]! & UPPER) | (mt[(i + 1) % N]! & LOWER);
      mt[i] = mt[(i + M) % N]! ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    this.#index = 0;
  }

  /** The next tempered uint32. */
  nextUint32(): number {
    if (this.#index >= N) this.#twist();
    let y = this.#state[this.#index++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}
