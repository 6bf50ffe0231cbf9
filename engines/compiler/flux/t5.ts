/**
 * @file ONNX graph of the T5 encoder as FLUX uses it (transformers' `T5EncoderModel`, `last_hidden_state`):
 * `input_ids [B, T]` → `[B, T, d_model]`, T dynamic.
 *
 * Forward, as transformers computes it (no attention mask: FLUX passes none, and pads are attended):
 *   x = embed_tokens[ids]                                                    [B, T, D]
 *   bias = relative_attention_bias[bucket(j − i)] of layer 0, shared by all layers  [1, H, T, T]
 *   per layer: x += o(softmax(q kᵀ + bias) v) on rms(x);  x += wo(act(wi_0 h) · wi_1 h) with h = rms(x)
 *   out = final_layer_norm(x)
 * T5 does not scale scores by Dh^-½ (it is folded into the trained weights) and its LayerNorm is RMS without mean
 * subtraction or bias. Everything stays float32: the residual stream of T5-XXL overflows fp16.
 *
 * The relative-position buckets are computed inside the graph for any T. transformers uses a float32 log for the
 * logarithmic buckets; instead of a Log op (whose last-ulp rounding could move a boundary distance to the other
 * bucket), the graph compares distances with integer thresholds found here by replaying that float32 arithmetic.
 * The result is the same bucket matrix with integer ops only.
 *
 * Weight names: `encoder.block.N.layer.{0,1}.*`, `encoder.final_layer_norm.weight`, and the embedding as
 * `encoder.embed_tokens.weight` or the tied `shared.weight`.
 */
import { type Dim, type GraphBuilder, ONNX_DTYPE } from '../onnx/graph-builder.ts';
import { linear, rmsNorm, type WeightReader } from '../onnx/nn.ts';
import {
  activation,
  CheckedWeights,
  type GraphSignature,
  mergeHeads,
  positionsOf,
  splitHeads,
  type T5EncoderConfig,
  TextEncoderConfigError,
} from './text-config.ts';

/** Options of {@link buildT5Graph}. */
export interface T5GraphOptions {
  /** Sequence dim of `input_ids`: symbolic (any T) or fixed. @default 'seq' */
  seqLen?: Dim;
}

/**
 * Emits the T5 encoder graph into `b`: input `input_ids` int64 `[batch, seq]`, output `last_hidden_state` float32
 * `[batch, seq, d_model]`.
 *
 * @throws TextEncoderConfigError naming the weight file and tensor when one is missing or mis-shaped.
 */
export function buildT5Graph(
  b: GraphBuilder,
  w: WeightReader,
  config: T5EncoderConfig,
  options: T5GraphOptions = {},
): GraphSignature {
  const cw = new CheckedWeights(w);
  const D = config.dModel;
  const inner = config.numHeads * config.dKv;
  const seqLen = options.seqLen ?? 'seq';
  const ids = b.input('input_ids', 'int64', ['batch', seqLen]);

  const x0 = b.scope('embed_tokens', () => {
    const table = cw.read([config.vocabSize, D], 'encoder.embed_tokens.weight', 'shared.weight');
    return b.op('Gather', [b.f32('embed_tokens', table, [config.vocabSize, D]), ids], { axis: 0 }); // [B, T, D]
  });

  const bias = b.scope('relative_attention_bias', () => {
    const table = cw.read(
      [config.numBuckets, config.numHeads],
      'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
    );
    const buckets = t5RelativeBuckets(b, positionsOf(b, ids, 1), config.numBuckets, config.maxDistance); // [T, T]
    const perPair = b.op(
      'Gather',
      [b.f32('relative_attention_bias', table, [config.numBuckets, config.numHeads]), buckets],
      { axis: 0 },
    );
    return b.op('Transpose', [perPair], { perm: [2, 0, 1] }); // [T, T, H] → [H, T, T], broadcast over B
  });

  let x = x0;
  for (let i = 0; i < config.numLayers; i++) {
    const p = `encoder.block.${i}`;
    x = b.scope(p, () => {
      const attn = b.scope('SelfAttention', () => {
        const h = rmsNorm(
          b,
          x,
          cw.read([D], `${p}.layer.0.layer_norm.weight`),
          config.layerNormEps,
          `${p}.layer.0.layer_norm`,
        );
        const proj = (n: string) =>
          linear(
            b,
            h,
            cw.linear(`${p}.layer.0.SelfAttention.${n}`, inner, D, false),
            `${p}.layer.0.SelfAttention.${n}`,
          );
        const q = splitHeads(b, proj('q'), config.numHeads, config.dKv); // [B, H, T, Dk]
        const k = splitHeads(b, proj('k'), config.numHeads, config.dKv);
        const v = splitHeads(b, proj('v'), config.numHeads, config.dKv);
        const scores = b.op('Add', [b.op('MatMul', [q, b.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), bias]); // [B, H, T, T]
        const ctx = b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), v]);
        const o = cw.linear(`${p}.layer.0.SelfAttention.o`, D, inner, false);
        return linear(b, mergeHeads(b, ctx, config.numHeads, config.dKv), o, `${p}.layer.0.SelfAttention.o`);
      });
      const x1 = b.op('Add', [x, attn]);
      const ff = b.scope('DenseReluDense', () => {
        const h = rmsNorm(
          b,
          x1,
          cw.read([D], `${p}.layer.1.layer_norm.weight`),
          config.layerNormEps,
          `${p}.layer.1.layer_norm`,
        );
        return feedForward(b, cw, config, `${p}.layer.1.DenseReluDense`, h);
      });
      return b.op('Add', [x1, ff]);
    });
  }

  const out = rmsNorm(
    b,
    x,
    cw.read([D], 'encoder.final_layer_norm.weight'),
    config.layerNormEps,
    'encoder.final_layer_norm',
  );
  b.output(out, 'last_hidden_state', 'float32', ['batch', seqLen, D]);
  return {
    inputs: [{ name: 'input_ids', dtype: 'int64', dims: ['batch', seqLen] }],
    outputs: [{ name: 'last_hidden_state', dtype: 'float32', dims: ['batch', seqLen, D] }],
  };
}

/** Gated: `wo(act(wi_0 h) · wi_1 h)`; otherwise `wo(act(wi h))`. h `[B, T, D]` → `[B, T, D]`. */
function feedForward(b: GraphBuilder, cw: CheckedWeights, config: T5EncoderConfig, prefix: string, h: string): string {
  const { dModel: D, dFf: F } = config;
  const up = (n: string) => linear(b, h, cw.linear(`${prefix}.${n}`, F, D, false), `${prefix}.${n}`); // [B, T, F]
  const hidden = config.gated
    ? b.op('Mul', [activation(b, up('wi_0'), config.act), up('wi_1')])
    : activation(b, up('wi'), config.act);
  return linear(b, hidden, cw.linear(`${prefix}.wo`, D, F, false), `${prefix}.wo`);
}

/**
 * The bucket transformers' `_relative_position_bucket(j − i, bidirectional=True)` gives a distance `n ≥ max_exact`
 * before clamping: `max_exact + long(log(n / max_exact) / log(max_distance / max_exact) · (half − max_exact))`,
 * replayed in float32 (`Math.fround` after every op) as torch computes it on float32 tensors with Python scalars.
 */
export function t5LogBucket(n: number, numBuckets: number, maxDistance: number): number {
  const f = Math.fround;
  const half = Math.floor(numBuckets / 2);
  const maxExact = Math.floor(half / 2);
  const ratio = f(f(n) / maxExact);
  const scaled = f(f(f(Math.log(ratio)) / f(Math.log(maxDistance / maxExact))) * (half - maxExact));
  return maxExact + Math.trunc(scaled);
}

/**
 * Smallest distances at which the logarithmic bucket reaches `max_exact + k`, for k = 1 .. half − max_exact − 1
 * (the last bucket, half − 1, is the clamp). The bucket of a distance n ≥ max_exact is then `max_exact + #{t ≤ n}`.
 */
export function t5BucketThresholds(numBuckets: number, maxDistance: number): number[] {
  const half = Math.floor(numBuckets / 2);
  const maxExact = Math.floor(half / 2);
  const thresholds: number[] = [];
  // The bucket is non-decreasing in n (log, division and product by positive constants are monotone in float32).
  for (let n = maxExact, k = 1; k < half - maxExact; n++) {
    if (n > 1e9) {
      const why = `no distance reaches bucket ${maxExact + k} with num_buckets ${numBuckets}, max_distance ${maxDistance}`;
      throw new TextEncoderConfigError('T5 relative_attention config', why);
    }
    while (k < half - maxExact && t5LogBucket(n, numBuckets, maxDistance) >= maxExact + k) {
      thresholds.push(n);
      k++;
    }
  }
  return thresholds;
}

/**
 * Emits transformers' bidirectional `_relative_position_bucket` for all pairs of `positions` (int64 `[T]`): int64
 * `[T, T]` whose entry (i, j) buckets the key-minus-query distance j − i. Integer ops only; see the file header.
 */
export function t5RelativeBuckets(b: GraphBuilder, positions: string, numBuckets: number, maxDistance: number): string {
  const half = Math.floor(numBuckets / 2);
  const maxExact = Math.floor(half / 2);
  const rel = b.op('Sub', [
    b.op('Unsqueeze', [positions, b.constI64([0])]),
    b.op('Unsqueeze', [positions, b.constI64([1])]),
  ]); // [T, T]
  const zero = b.i64('zero', [0], []);
  // Keys after the query use the upper half of the buckets.
  const direction = b.op('Mul', [
    b.op('Cast', [b.op('Greater', [rel, zero])], { to: ONNX_DTYPE.int64 }),
    b.i64('half', [half], []),
  ]);
  const n = b.op('Abs', [rel]);
  const thresholds = t5BucketThresholds(numBuckets, maxDistance);
  let large = b.i64('max_exact', [maxExact], []);
  if (thresholds.length > 0) {
    // #thresholds ≤ n: compare [T, T, 1] with [K] → [T, T, K], count along K.
    const reached = b.op('GreaterOrEqual', [b.op('Unsqueeze', [n, b.constI64([-1])]), b.i64('thresholds', thresholds)]);
    const count = b.op('ReduceSum', [b.op('Cast', [reached], { to: ONNX_DTYPE.int64 }), b.constI64([-1])], {
      keepdims: 0,
    });
    large = b.op('Add', [large, count]);
  }
  const small = b.op('Less', [n, b.i64('max_exact_small', [maxExact], [])]);
  return b.op('Add', [direction, b.op('Where', [small, n, large])]);
}
