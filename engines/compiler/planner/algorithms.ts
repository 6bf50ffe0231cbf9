/**
 * @file The per-layer compression algorithms of the elastic modes, each emitted as a {@link LinearPolicy} over ORT's
 * CPU kernels (ONNX Runtime 1.30, `com.microsoft` contrib ops):
 *
 * - `fp32`: the layer untouched (delegates to the wrapped policy, so LoRA or any other base policy still applies).
 * - `int8-dyn`: dynamic int8 activations × int8 weights, `DynamicQuantizeMatMul` (per-output-channel symmetric weight
 *   scales, per-tensor activation scale computed at run time). On AVX512-VNNI this is ~4× faster than the float GEMM.
 * - `int8-b128`, `int4-b32`, `int4-b128`: weight-only block quantisation, `MatMulNBits` (bits 8 / 4, blocks of 32 or
 *   128 input features, one float scale per block, symmetric around the default zero point 2^(bits-1)).
 *   `accuracy_level` 4 lets MLAS run the product in int8; with level 0 (float compute) ORT 1.30 was measured slower
 *   than the plain float GEMM on this CPU for bits 8 and no faster for bits 4, so the planner could never pick it.
 *
 * Every algorithm keeps the layer's float32 input and output, so algorithms mix freely layer by layer.
 */

import type { LinearLayer, LinearPolicy } from '../flux/linear-policy.ts';
import { plainLinear } from '../flux/linear-policy.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { bytesOf } from '../onnx/graph-builder.ts';
import { transpose2d } from '../onnx/nn.ts';

/** Names of the per-layer algorithms, cheapest-to-emit first. */
export const ALGORITHMS = ['fp32', 'int8-dyn', 'int8-b128', 'int4-b32', 'int4-b128'] as const;
export type Algorithm = (typeof ALGORITHMS)[number];

/** The compressing algorithms (everything but `fp32`). */
export const COMPRESSIONS: readonly Algorithm[] = ALGORITHMS.filter((a) => a !== 'fp32');

const MS_DOMAIN = 'com.microsoft';

/** True when `name` is a known algorithm. */
export function isAlgorithm(name: string): name is Algorithm {
  return (ALGORITHMS as readonly string[]).includes(name);
}

/**
 * Per-output-channel symmetric int8 quantisation of a PyTorch `[out, in]` weight, returned transposed to `[in, out]`
 * (the layout `DynamicQuantizeMatMul` multiplies by) with one scale per output column.
 */
export function quantizeInt8PerChannel(
  weight: Float32Array,
  out: number,
  inF: number,
): { q: Int8Array; scales: Float32Array } {
  const scales = new Float32Array(out);
  for (let o = 0; o < out; o++) {
    let amax = 0;
    const row = o * inF;
    for (let k = 0; k < inF; k++) amax = Math.max(amax, Math.abs(weight[row + k]!));
    scales[o] = amax > 0 ? amax / 127 : 1;
  }
  const wt = transpose2d(weight, out, inF); // [in, out]
  const q = new Int8Array(wt.length);
  for (let k = 0; k < inF; k++) {
    const base = k * out;
    for (let o = 0; o < out; o++) q[base + o] = Math.max(-127, Math.min(127, Math.round(wt[base + o]! / scales[o]!)));
  }
  return { q, scales };
}

/**
 * Block quantisation in `MatMulNBits` layout: `B [N, kBlocks, blockSize·bits/8]` uint8 (PyTorch row order: one row
 * per output feature, blocks along the input axis, 4-bit values packed low nibble first), `scales [N·kBlocks]`.
 * Symmetric: q = round(w / s) + 2^(bits-1), s = max|w| / (2^(bits-1) − 1) per block; the last block is zero-padded.
 */
export function quantizeBlocks(
  weight: Float32Array,
  out: number,
  inF: number,
  bits: 4 | 8,
  blockSize: number,
): { q: Uint8Array; scales: Float32Array; kBlocks: number; blobSize: number } {
  const kBlocks = Math.ceil(inF / blockSize);
  const blobSize = (blockSize * bits) / 8;
  const q = new Uint8Array(out * kBlocks * blobSize);
  const scales = new Float32Array(out * kBlocks);
  const zero = 1 << (bits - 1);
  const qmax = (1 << bits) - 1;
  for (let n = 0; n < out; n++) {
    for (let kb = 0; kb < kBlocks; kb++) {
      const k0 = kb * blockSize;
      const k1 = Math.min(inF, k0 + blockSize);
      let amax = 0;
      for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(weight[n * inF + k]!));
      const s = amax > 0 ? amax / (zero - 1) : 1;
      scales[n * kBlocks + kb] = s;
      const base = (n * kBlocks + kb) * blobSize;
      for (let i = 0; i < blockSize; i++) {
        const k = k0 + i;
        const v = k < k1 ? Math.max(0, Math.min(qmax, Math.round(weight[n * inF + k]! / s) + zero)) : zero;
        if (bits === 8) q[base + i] = v;
        else q[base + (i >> 1)]! |= i & 1 ? v << 4 : v;
      }
    }
  }
  return { q, scales, kBlocks, blobSize };
}

function addBias(b: GraphBuilder, y: string, layer: LinearLayer): string {
  const { bias, outFeatures } = layer.weights;
  return bias ? b.op('Add', [y, b.f32(`${layer.name}.bias`, bias, [outFeatures])]) : y;
}

/** `int8-dyn`: DynamicQuantizeMatMul with per-channel int8 weights (zero points 0). */
export function int8DynamicLinear(b: GraphBuilder, x: string, layer: LinearLayer): string {
  const { weight, outFeatures: n, inFeatures: k } = layer.weights;
  const { q, scales } = quantizeInt8PerChannel(weight, n, k);
  b.useDomain(MS_DOMAIN, 1);
  const qw = b.initializer(`${layer.name}.weight_q8`, { dtype: 'int8', dims: [k, n], bytes: bytesOf(q) });
  const sc = b.f32(`${layer.name}.weight_scale`, scales, [n]);
  // The int8 zero-point input is given (all zeros): ORT 1.30 picks a faster kernel path with it than without.
  const zp = b.initializer(`${layer.name}.weight_zp`, { dtype: 'int8', dims: [n], bytes: new Uint8Array(n) });
  return addBias(b, b.op('DynamicQuantizeMatMul', [x, qw, sc, zp], {}, MS_DOMAIN), layer);
}

/** `MatMulNBits` with `bits` and `blockSize`, int8 compute (accuracy level 4). */
export function nbitsLinear(bits: 4 | 8, blockSize: number): LinearPolicy {
  return (b, x, layer) => {
    const { weight, outFeatures: n, inFeatures: k } = layer.weights;
    const { q, scales, kBlocks, blobSize } = quantizeBlocks(weight, n, k, bits, blockSize);
    b.useDomain(MS_DOMAIN, 1);
    const qw = b.initializer(`${layer.name}.weight_q${bits}`, {
      dtype: 'uint8',
      dims: [n, kBlocks, blobSize],
      bytes: q,
    });
    const sc = b.f32(`${layer.name}.weight_scale`, scales, [n * kBlocks]);
    const y = b.op(
      'MatMulNBits',
      [x, qw, sc],
      { K: k, N: n, bits, block_size: blockSize, accuracy_level: 4 },
      MS_DOMAIN,
    );
    return addBias(b, y, layer);
  };
}

/** The policy of `algorithm`; `fp32` delegates to `base`. */
export function algorithmPolicy(algorithm: Algorithm, base: LinearPolicy = plainLinear): LinearPolicy {
  switch (algorithm) {
    case 'fp32':
      return base;
    case 'int8-dyn':
      return int8DynamicLinear;
    case 'int8-b128':
      return nbitsLinear(8, 128);
    case 'int4-b32':
      return nbitsLinear(4, 32);
    case 'int4-b128':
      return nbitsLinear(4, 128);
  }
}

/**
 * A policy that applies the algorithm `choices[layer.name]` to each layer (default `fp32`) and hands `fp32` layers to
 * `base`. Composable: another policy (LoRA) may wrap the result, and `base` may itself be a wrapper.
 * @throws Error when a choice names an unknown algorithm.
 */
export function plannedPolicy(
  choices: Readonly<Record<string, string>>,
  base: LinearPolicy = plainLinear,
): LinearPolicy {
  const policies = new Map<string, LinearPolicy>();
  for (const [layer, alg] of Object.entries(choices)) {
    if (!isAlgorithm(alg))
      throw new Error(`plan for ${layer}: unknown algorithm "${alg}" (known: ${ALGORITHMS.join(', ')})`);
    policies.set(layer, algorithmPolicy(alg, base));
  }
  return (b, x, layer) => (policies.get(layer.name) ?? base)(b, x, layer);
}
