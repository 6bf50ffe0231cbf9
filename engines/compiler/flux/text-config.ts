/**
 * @file Typed configs of the two FLUX text encoders (transformers' `CLIPTextConfig` and `T5Config`, read from a
 * component's `config.json`), the graph signature both compilers return, and the shared weight checks.
 *
 * Why a zod parse and not a cast: the graph is sized from these numbers, so a wrong or missing field must fail here,
 * naming the file and field, not as an opaque ORT shape error when the engine first runs.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { Dim, DType, GraphBuilder } from '../onnx/graph-builder.ts';
import { geluTanh, type LinearWeights, quickGelu, reshape, type WeightReader } from '../onnx/nn.ts';

/** A text-encoder config or its weights do not match what the graph needs. */
export class TextEncoderConfigError extends Error {
  /** The config file, weight file or tensor at fault. */
  readonly source: string;

  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = 'TextEncoderConfigError';
    this.source = source;
  }
}

/** One graph input or output as the engine manifest records it. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  dims: Dim[];
}

/** Inputs and outputs of a compiled component graph. */
export interface GraphSignature {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
}

/** Activations the encoders may name; `gelu_new` / `gelu_pytorch_tanh` are the tanh approximation. */
export type TextActivation = 'quick_gelu' | 'gelu' | 'gelu_new' | 'gelu_pytorch_tanh' | 'relu';

const ACTIVATIONS = ['quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu'] as const;

/** The `CLIPTextConfig` fields the CLIP text graph uses. */
export interface ClipTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  layerNormEps: number;
  hiddenAct: TextActivation;
  /** 2 = legacy configs (FLUX.1-dev's CLIP-L included): pool at argmax(input_ids); else the first id equal to it. */
  eosTokenId: number;
}

/** The `T5Config` fields the T5 encoder graph uses. */
export interface T5EncoderConfig {
  vocabSize: number;
  dModel: number;
  dKv: number;
  dFf: number;
  numHeads: number;
  numLayers: number;
  numBuckets: number;
  maxDistance: number;
  layerNormEps: number;
  /** `gated-gelu` (T5 v1.1, FLUX): `act(wi_0 x) · wi_1 x`; otherwise `act(wi x)`. */
  gated: boolean;
  act: TextActivation;
}

const posInt = z.number().int().positive();

const clipSchema = z.object({
  vocab_size: posInt,
  hidden_size: posInt,
  intermediate_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  max_position_embeddings: posInt,
  layer_norm_eps: z.number().positive().default(1e-5),
  hidden_act: z.enum(ACTIVATIONS).default('quick_gelu'),
  eos_token_id: z.number().int().nonnegative().default(2),
});

const t5Schema = z.object({
  vocab_size: posInt,
  d_model: posInt,
  d_kv: posInt,
  d_ff: posInt,
  num_heads: posInt,
  num_layers: posInt,
  relative_attention_num_buckets: posInt.default(32),
  relative_attention_max_distance: posInt.default(128),
  layer_norm_epsilon: z.number().positive().default(1e-6),
  feed_forward_proj: z.string().default('relu'),
});

function zodMessage(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
}

/** Validates a parsed CLIP text `config.json`; `source` names it in errors. */
export function parseClipTextConfig(json: unknown, source = 'text_encoder/config.json'): ClipTextConfig {
  const r = clipSchema.safeParse(json);
  if (!r.success) throw new TextEncoderConfigError(source, `invalid CLIP text config: ${zodMessage(r.error)}`);
  const c = r.data;
  if (c.hidden_size % c.num_attention_heads !== 0) {
    throw new TextEncoderConfigError(
      source,
      `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}`,
    );
  }
  return {
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    maxPositions: c.max_position_embeddings,
    layerNormEps: c.layer_norm_eps,
    hiddenAct: c.hidden_act,
    eosTokenId: c.eos_token_id,
  };
}

/** Validates a parsed T5 `config.json`; `source` names it in errors. */
export function parseT5EncoderConfig(json: unknown, source = 'text_encoder_2/config.json'): T5EncoderConfig {
  const r = t5Schema.safeParse(json);
  if (!r.success) throw new TextEncoderConfigError(source, `invalid T5 config: ${zodMessage(r.error)}`);
  const c = r.data;
  // transformers: `act_info = feed_forward_proj.split("-")`; "gated-gelu" is special-cased to gelu_new.
  const parts = c.feed_forward_proj.split('-');
  const gated = parts[0] === 'gated';
  if (parts.length > 2 || (parts.length === 2 && !gated)) {
    throw new TextEncoderConfigError(
      source,
      `feed_forward_proj '${c.feed_forward_proj}' is not '<act>' or 'gated-<act>'`,
    );
  }
  const actName = c.feed_forward_proj === 'gated-gelu' ? 'gelu_new' : parts[parts.length - 1]!;
  const act = ACTIVATIONS.find((a) => a === actName);
  if (!act) throw new TextEncoderConfigError(source, `feed_forward_proj activation '${actName}' is not supported`);
  if (c.relative_attention_num_buckets < 4) {
    throw new TextEncoderConfigError(source, `relative_attention_num_buckets ${c.relative_attention_num_buckets} < 4`);
  }
  return {
    vocabSize: c.vocab_size,
    dModel: c.d_model,
    dKv: c.d_kv,
    dFf: c.d_ff,
    numHeads: c.num_heads,
    numLayers: c.num_layers,
    numBuckets: c.relative_attention_num_buckets,
    maxDistance: c.relative_attention_max_distance,
    layerNormEps: c.layer_norm_epsilon,
    gated,
    act,
  };
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new TextEncoderConfigError(path, `cannot read config: ${(err as Error).message}`);
  }
}

/** Reads and validates `<dir>/config.json` of a CLIP text component. */
export function loadClipTextConfig(dir: string): ClipTextConfig {
  const path = join(dir, 'config.json');
  return parseClipTextConfig(readJson(path), path);
}

/** Reads and validates `<dir>/config.json` of a T5 encoder component. */
export function loadT5EncoderConfig(dir: string): T5EncoderConfig {
  const path = join(dir, 'config.json');
  return parseT5EncoderConfig(readJson(path), path);
}

/**
 * Weight access with the checks both compilers need: names tried in order (aliases such as CLIP's `text_model.`
 * prefix or T5's `shared.weight`), and shapes compared with what the config implies.
 */
export class CheckedWeights {
  constructor(
    private readonly w: WeightReader,
    /** Prefixes tried after the bare name, e.g. `['text_model.']`. */
    private readonly prefixes: readonly string[] = [],
  ) {}

  /** The file the reader reads, when it says (WeightSource has `path`). */
  get source(): string {
    const p = (this.w as { path?: unknown }).path;
    return typeof p === 'string' ? p : 'weights';
  }

  /** The stored name of the first candidate present; throws naming the candidates when none is. */
  resolve(...candidates: string[]): string {
    for (const c of candidates) {
      for (const p of ['', ...this.prefixes]) if (this.w.has(p + c)) return p + c;
    }
    throw new TextEncoderConfigError(
      this.source,
      `missing tensor '${candidates.join("' (or '")}${candidates.length > 1 ? "')" : "'"}`,
    );
  }

  /** Reads the first present candidate as float32 after checking its shape against `shape` (from the config). */
  read(shape: number[], ...candidates: string[]): Float32Array {
    const name = this.resolve(...candidates);
    const got = this.w.info(name).shape;
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      throw new TextEncoderConfigError(
        this.source,
        `tensor '${name}' has shape [${got.join(',')}], config implies [${shape.join(',')}]`,
      );
    }
    return this.w.readF32(name);
  }

  /** A Linear `[out, in]` weight with optional bias (`withBias` true requires it). */
  linear(prefix: string, outFeatures: number, inFeatures: number, withBias: boolean): LinearWeights {
    const weight = this.read([outFeatures, inFeatures], `${prefix}.weight`);
    const bias = withBias ? this.read([outFeatures], `${prefix}.bias`) : undefined;
    return { weight, outFeatures, inFeatures, ...(bias ? { bias } : {}) };
  }
}

/** Applies a config-named activation elementwise. */
export function activation(b: GraphBuilder, x: string, act: TextActivation): string {
  switch (act) {
    case 'quick_gelu':
      return quickGelu(b, x);
    case 'gelu':
      return b.op('Gelu', [x]); // exact erf form, as torch's nn.functional.gelu default
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
      return geluTanh(b, x);
    case 'relu':
      return b.op('Relu', [x]);
  }
}

/** `[B, S, H·Dh]` → `[B, H, S, Dh]`. */
export function splitHeads(b: GraphBuilder, x: string, heads: number, headDim: number): string {
  return b.op('Transpose', [reshape(b, x, [0, 0, heads, headDim])], { perm: [0, 2, 1, 3] });
}

/** `[B, H, S, Dh]` → `[B, S, H·Dh]`. */
export function mergeHeads(b: GraphBuilder, x: string, heads: number, headDim: number): string {
  return reshape(b, b.op('Transpose', [x], { perm: [0, 2, 1, 3] }), [0, 0, heads * headDim]);
}

/** `Range(0, S)` as int64 `[S]`, where S is `axis` of `x`'s runtime shape (dynamic sequence lengths). */
export function positionsOf(b: GraphBuilder, x: string, axis: number): string {
  const len = b.op('Squeeze', [b.op('Shape', [x], { start: axis, end: axis + 1 }), b.constI64([0])]); // scalar S
  const zero = b.i64('pos_start', [0], []);
  const one = b.i64('pos_step', [1], []);
  return b.op('Range', [zero, len, one]);
}
