/**
 * @file ONNX graph of the CLIP text tower as FLUX uses it (transformers' `CLIPTextModel`, `pooler_output` only):
 * `input_ids [B, S]` → `pooled [B, hidden]`.
 *
 * Forward, as transformers computes it:
 *   x = token_embedding[ids] + position_embedding[0..S)                      [B, S, D]
 *   per layer: x += out_proj(causal_mha(layer_norm1(x)));  x += fc2(act(fc1(layer_norm2(x))))
 *   pooled = final_layer_norm(x[b, eos_b])                                    [B, D]
 * FLUX passes no padding mask, so the causal mask is the only one. There is no `text_projection` (FLUX takes
 * `CLIPTextModel`, not `CLIPTextModelWithProjection`).
 *
 * Pooling position: FLUX.1-dev's `text_encoder/config.json` has the legacy `eos_token_id: 2`, for which transformers
 * takes `argmax(input_ids)` per row (EOS 49407 is the largest id and argmax returns its first occurrence). Newer
 * configs carry the real EOS id, and the first position equal to it is taken. Both are implemented.
 *
 * Weight names are the transformers ones without the `text_model.` prefix (`embeddings.*`, `encoder.layers.N.*`,
 * `final_layer_norm.*`); prefixed checkpoints (FLUX.1-dev's) are accepted too.
 */
import { type Dim, type GraphBuilder, ONNX_DTYPE } from '../onnx/graph-builder.ts';
import { layerNorm, linear, type WeightReader } from '../onnx/nn.ts';
import {
  activation,
  CheckedWeights,
  type ClipTextConfig,
  type GraphSignature,
  mergeHeads,
  positionsOf,
  splitHeads,
  TextEncoderConfigError,
} from './text-config.ts';

/** transformers' legacy CLIP configs (before the EOS id was fixed) carry `eos_token_id: 2`. */
export const LEGACY_CLIP_EOS_TOKEN_ID = 2;

/** Options of {@link buildClipGraph}. */
export interface ClipGraphOptions {
  /** Sequence dim of `input_ids`: a fixed length ≤ max_position_embeddings or a symbolic name. @default max_position_embeddings (77) */
  seqLen?: Dim;
}

/**
 * Emits the CLIP text graph into `b`: graph input `input_ids` int64 `[batch, seq]`, output `pooled` float32
 * `[batch, hidden]`. Reads every weight once, checking its shape against `config`.
 *
 * @throws TextEncoderConfigError naming the weight file and tensor when one is missing or mis-shaped.
 */
export function buildClipGraph(
  b: GraphBuilder,
  w: WeightReader,
  config: ClipTextConfig,
  options: ClipGraphOptions = {},
): GraphSignature {
  const cw = new CheckedWeights(w, ['text_model.']);
  const D = config.hiddenSize;
  const seqLen = options.seqLen ?? config.maxPositions;
  if (typeof seqLen === 'number' && (seqLen < 1 || seqLen > config.maxPositions)) {
    throw new TextEncoderConfigError(
      'clip options',
      `seqLen ${seqLen} outside 1..max_position_embeddings (${config.maxPositions})`,
    );
  }
  const ids = b.input('input_ids', 'int64', ['batch', seqLen]);

  // Embeddings: Gather rows of [vocab, D] by id and of [maxPositions, D] by position; broadcast add → [B, S, D].
  const x0 = b.scope('embeddings', () => {
    const tok = b.f32('token_embedding', cw.read([config.vocabSize, D], 'embeddings.token_embedding.weight'), [
      config.vocabSize,
      D,
    ]);
    const posTable = cw.read([config.maxPositions, D], 'embeddings.position_embedding.weight');
    const pos = b.f32('position_embedding', posTable, [config.maxPositions, D]);
    const positions = positionsOf(b, ids, 1); // [S]
    return b.op('Add', [b.op('Gather', [tok, ids], { axis: 0 }), b.op('Gather', [pos, positions], { axis: 0 })]);
  });

  // Causal mask as a bool [S, S], true above the diagonal (key j > query i), built once for all layers.
  const future = b.scope('causal_mask', () => {
    const positions = positionsOf(b, ids, 1);
    const keyPos = b.op('Unsqueeze', [positions, b.constI64([0])]); // [1, S]
    const queryPos = b.op('Unsqueeze', [positions, b.constI64([1])]); // [S, 1]
    return b.op('Greater', [keyPos, queryPos]);
  });

  let x = x0;
  for (let i = 0; i < config.numLayers; i++) {
    x = b.scope(`encoder.layers.${i}`, () => clipLayer(b, cw, config, `encoder.layers.${i}`, x, future));
  }

  const pooled = b.scope('pooler', () => {
    // Index of the EOS token per row as [B, 1] int64; ArgMax returns the first maximum (select_last_index = 0).
    // transformers casts the ids to int32 before argmax too.
    const ids32 = b.op('Cast', [ids], { to: ONNX_DTYPE.int32 });
    const key =
      config.eosTokenId === LEGACY_CLIP_EOS_TOKEN_ID
        ? ids32
        : b.op('Cast', [b.op('Equal', [ids, b.i64('eos_token_id', [config.eosTokenId], [])])], {
            to: ONNX_DTYPE.int32,
          });
    const eosIndex = b.op('ArgMax', [key], { axis: 1, keepdims: 1 }); // [B, 1]
    // Gather x[b, eos_b, :] → [B, D]. LayerNorm is per token, so pooling before the final norm gives the same values.
    const picked = b.op('GatherND', [x, eosIndex], { batch_dims: 1 });
    return layerNorm(b, picked, D, config.layerNormEps, readNorm(cw, 'final_layer_norm', D), 'final_layer_norm');
  });

  const signature: GraphSignature = {
    inputs: [{ name: 'input_ids', dtype: 'int64', dims: ['batch', seqLen] }],
    outputs: [{ name: 'pooled', dtype: 'float32', dims: ['batch', D] }],
  };
  b.output(pooled, 'pooled', 'float32', ['batch', D]);
  return signature;
}

/** One pre-LN encoder layer: x `[B, S, D]` → `[B, S, D]`. */
function clipLayer(
  b: GraphBuilder,
  cw: CheckedWeights,
  config: ClipTextConfig,
  prefix: string,
  x: string,
  future: string,
): string {
  const D = config.hiddenSize;
  const H = config.numHeads;
  const Dh = D / H;
  const eps = config.layerNormEps;

  const attnOut = b.scope('self_attn', () => {
    const h = layerNorm(b, x, D, eps, readNorm(cw, `${prefix}.layer_norm1`, D), `${prefix}.layer_norm1`);
    const proj = (name: string) =>
      linear(b, h, cw.linear(`${prefix}.self_attn.${name}`, D, D, true), `${prefix}.self_attn.${name}`);
    const q = splitHeads(b, proj('q_proj'), H, Dh); // [B, H, S, Dh]
    const k = splitHeads(b, proj('k_proj'), H, Dh);
    const v = splitHeads(b, proj('v_proj'), H, Dh);
    // scores = (q · Dh^-½) kᵀ  [B, H, S, S]; future keys set to -inf (the diagonal is always kept, so no row is all -inf).
    const scaled = b.op('Mul', [q, b.constF32(1 / Math.sqrt(Dh))]);
    const scores = b.op('MatMul', [scaled, b.op('Transpose', [k], { perm: [0, 1, 3, 2] })]);
    const masked = b.op('Where', [future, b.constF32(Number.NEGATIVE_INFINITY), scores]);
    const ctx = b.op('MatMul', [b.op('Softmax', [masked], { axis: -1 }), v]); // [B, H, S, Dh]
    return linear(
      b,
      mergeHeads(b, ctx, H, Dh),
      cw.linear(`${prefix}.self_attn.out_proj`, D, D, true),
      `${prefix}.self_attn.out_proj`,
    );
  });
  const x1 = b.op('Add', [x, attnOut]);

  const mlpOut = b.scope('mlp', () => {
    const h = layerNorm(b, x1, D, eps, readNorm(cw, `${prefix}.layer_norm2`, D), `${prefix}.layer_norm2`);
    const f1 = linear(b, h, cw.linear(`${prefix}.mlp.fc1`, config.intermediateSize, D, true), `${prefix}.mlp.fc1`);
    const a = activation(b, f1, config.hiddenAct);
    return linear(b, a, cw.linear(`${prefix}.mlp.fc2`, D, config.intermediateSize, true), `${prefix}.mlp.fc2`);
  });
  return b.op('Add', [x1, mlpOut]);
}

function readNorm(cw: CheckedWeights, prefix: string, dim: number): { weight: Float32Array; bias: Float32Array } {
  return { weight: cw.read([dim], `${prefix}.weight`), bias: cw.read([dim], `${prefix}.bias`) };
}
