/**
 * T5 encoder graph: compiled from models/flux-tiny/text_encoder_2 with external data, run through the runtime's
 * Session at T = 512, compared with transformers' `last_hidden_state` in text_encoders.safetensors for every prompt.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildT5Graph,
  t5BucketThresholds,
  t5LogBucket,
  t5RelativeBuckets,
} from '../../../../engines/compiler/flux/t5.ts';
import {
  loadT5EncoderConfig,
  parseT5EncoderConfig,
  positionsOf,
  type T5EncoderConfig,
  TextEncoderConfigError,
} from '../../../../engines/compiler/flux/text-config.ts';
import { ExternalDataWriter } from '../../../../engines/compiler/onnx/external-data.ts';
import { GraphBuilder } from '../../../../engines/compiler/onnx/graph-builder.ts';
import type { WeightReader } from '../../../../engines/compiler/onnx/nn.ts';
import { Session } from '../../../../src/runtime/index.ts';
import { relativeError } from '../../../../src/shared/tensor-metrics.ts';
import { openComponentWeights, type WeightSource } from '../../../../src/shared/weights/weight-source.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../../../helpers/paths.ts';
import { readSafetensorsF32 } from '../../../helpers/read-safetensors.ts';

const T5_DIR = join(MODEL_DIR, 'text_encoder_2');
const cases = JSON.parse(readFileSync(join(FIXTURES_DIR, 'tokenizer_cases.json'), 'utf8')) as {
  prompt: string;
  t5_input_ids: number[];
}[];
const reference = readSafetensorsF32(join(FIXTURES_DIR, 'text_encoders.safetensors')).prompt_embeds!;

let tmp: string;
let weights: WeightSource;
let config: T5EncoderConfig;
let session: Session;
const sessions: Session[] = [];

/** Writes a built graph to `tmp/<name>.onnx` and loads it. */
async function load(name: string, b: GraphBuilder, data?: ExternalDataWriter): Promise<Session> {
  data?.close();
  const path = join(tmp, `${name}.onnx`);
  writeFileSync(path, b.encode());
  const s = await Session.create(name, path, { threads: 1 });
  sessions.push(s);
  return s;
}

async function encode(rows: number[][]): Promise<Float32Array> {
  const T = rows[0]!.length;
  const out = await session.run({
    input_ids: { data: BigInt64Array.from(rows.flat().map(BigInt)), dims: [rows.length, T] },
  });
  expect(out.last_hidden_state!.dims).toEqual([rows.length, T, config.dModel]);
  return out.last_hidden_state!.data as Float32Array;
}

/** transformers' `_relative_position_bucket(rel, bidirectional=True)` element by element, in float32 like torch. */
function referenceBucket(rel: number, numBuckets: number, maxDistance: number): number {
  const f = Math.fround;
  const half = Math.floor(numBuckets / 2);
  const maxExact = Math.floor(half / 2);
  const n = Math.abs(rel);
  const base = rel > 0 ? half : 0;
  if (n < maxExact) return base + n;
  const large =
    maxExact + Math.trunc(f(f(f(Math.log(f(n / maxExact))) / f(Math.log(maxDistance / maxExact))) * (half - maxExact)));
  return base + Math.min(large, half - 1);
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fluxql-t5-'));
  weights = openComponentWeights(T5_DIR);
  config = loadT5EncoderConfig(T5_DIR);
  const data = new ExternalDataWriter(join(tmp, 't5.onnx.data'));
  const b = new GraphBuilder({ name: 't5', externalData: data });
  buildT5Graph(b, weights, config);
  session = await load('t5', b, data);
});

afterAll(async () => {
  for (const s of sessions) await s.release();
  weights?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('T5 config', () => {
  it('reads flux-tiny text_encoder_2/config.json (gated-gelu → gelu_new)', () => {
    expect(config).toMatchObject({ gated: true, act: 'gelu_new', numBuckets: 32, maxDistance: 128 });
  });

  it('parses plain and gated feed_forward_proj and names bad fields', () => {
    const raw = JSON.parse(readFileSync(join(T5_DIR, 'config.json'), 'utf8'));
    expect(parseT5EncoderConfig({ ...raw, feed_forward_proj: 'relu' })).toMatchObject({ gated: false, act: 'relu' });
    expect(parseT5EncoderConfig({ ...raw, feed_forward_proj: 'gated-relu' })).toMatchObject({
      gated: true,
      act: 'relu',
    });
    expect(() => parseT5EncoderConfig({ ...raw, feed_forward_proj: 'gated-swish' }, 'c.json')).toThrow(
      /c\.json.*swish/,
    );
    expect(() => parseT5EncoderConfig({ ...raw, d_kv: 'x' }, 'c.json')).toThrow(/c\.json.*d_kv/);
  });
});

describe('T5 relative position buckets', () => {
  it('thresholds reproduce the float32 log buckets, clamped at the last bucket', () => {
    for (const [nb, md] of [
      [32, 128],
      [8, 128],
      [64, 256],
    ] as const) {
      const half = nb / 2;
      const maxExact = half / 2;
      const thr = t5BucketThresholds(nb, md);
      expect(thr).toHaveLength(half - maxExact - 1);
      for (let n = maxExact; n < 4 * md; n++) {
        const viaThresholds = maxExact + thr.filter((t) => t <= n).length;
        expect(viaThresholds, `n=${n}`).toBe(Math.min(t5LogBucket(n, nb, md), half - 1));
      }
      // Distances at exact powers of the log base land exactly on a bucket boundary (float32 is exact there).
      const base = md / maxExact;
      for (let k = 1; k < half - maxExact; k++) {
        const n = maxExact * base ** (k / (half - maxExact));
        if (Number.isInteger(n)) {
          expect(t5LogBucket(n, nb, md)).toBe(maxExact + k);
          expect(t5LogBucket(n - 1, nb, md)).toBe(maxExact + k - 1);
        }
      }
      expect(t5LogBucket(md, nb, md)).toBeGreaterThanOrEqual(half - 1);
    }
  });

  it('the in-graph bucket matrix equals transformers formula for T = 600', async () => {
    const b = new GraphBuilder({ name: 'buckets' });
    const ids = b.input('input_ids', 'int64', [1, 'seq']);
    b.output(t5RelativeBuckets(b, positionsOf(b, ids, 1), config.numBuckets, config.maxDistance), 'buckets', 'int64', [
      'seq',
      'seq',
    ]);
    const s = await load('buckets', b);
    const T = 600;
    const out = await s.run({ input_ids: { data: new BigInt64Array(T), dims: [1, T] } });
    expect(out.buckets!.dims).toEqual([T, T]);
    const got = out.buckets!.data as BigInt64Array;
    let mismatches = 0;
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        if (Number(got[i * T + j]) !== referenceBucket(j - i, config.numBuckets, config.maxDistance)) mismatches++;
      }
    }
    expect(mismatches).toBe(0);
  });
});

describe('buildT5Graph on flux-tiny', () => {
  it('matches transformers last_hidden_state for every fixture prompt at T = 512', async () => {
    const [N, T, D] = reference.shape as [number, number, number];
    expect([N, D]).toEqual([cases.length, config.dModel]);
    let worst = 0;
    for (const [i, c] of cases.entries()) {
      expect(c.t5_input_ids).toHaveLength(T);
      const got = await encode([c.t5_input_ids]);
      const err = relativeError(got, reference.data.subarray(i * T * D, (i + 1) * T * D));
      worst = Math.max(worst, err);
      expect(err, `prompt ${i} ${JSON.stringify(c.prompt)}`).toBeLessThanOrEqual(1e-4);
    }
    console.log(`T5 last_hidden_state: max relative error ${worst.toExponential(2)} over ${cases.length} prompts`);
  });

  it('gives the same rows for a batch as for single runs', async () => {
    const rows = cases.slice(0, 4).map((c) => c.t5_input_ids);
    const batch = await encode(rows);
    const per = rows[0]!.length * config.dModel;
    for (const [i, r] of rows.entries()) {
      expect(relativeError(batch.subarray(i * per, (i + 1) * per), await encode([r]))).toBeLessThanOrEqual(1e-6);
    }
  });

  it('runs any sequence length (dynamic T)', async () => {
    const ids = cases[0]!.t5_input_ids.slice(0, 77);
    const out = await encode([ids, ids]);
    expect(out.every(Number.isFinite)).toBe(true);
  });

  it('declares its signature', () => {
    const sig = buildT5Graph(new GraphBuilder({ name: 'sig' }), weights, config);
    expect(sig).toEqual({
      inputs: [{ name: 'input_ids', dtype: 'int64', dims: ['batch', 'seq'] }],
      outputs: [{ name: 'last_hidden_state', dtype: 'float32', dims: ['batch', 'seq', config.dModel] }],
    });
  });

  it('names a missing tensor and the file', () => {
    const hide = (hidden: string[]): WeightReader & { path: string } => ({
      path: weights.path,
      has: (n) => !hidden.includes(n) && weights.has(n),
      info: (n) => weights.info(n),
      readF32: (n) => weights.readF32(n),
    });
    const rab = 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight';
    const build = (w: WeightReader) => () => buildT5Graph(new GraphBuilder({ name: 'm' }), w, config);
    expect(build(hide([rab]))).toThrow(TextEncoderConfigError);
    expect(build(hide([rab]))).toThrow(`${weights.path}: missing tensor '${rab}'`);
    expect(build(hide(['shared.weight']))).toThrow(
      /missing tensor 'encoder\.embed_tokens\.weight' \(or 'shared\.weight'\)/,
    );
    expect(build(hide(['encoder.block.1.layer.1.DenseReluDense.wi_1.weight']))).toThrow(
      /block\.1\.layer\.1\.DenseReluDense\.wi_1/,
    );
  });

  it('names a tensor whose shape disagrees with the config', () => {
    const build = () =>
      buildT5Graph(new GraphBuilder({ name: 'm' }), weights, { ...config, numBuckets: config.numBuckets * 2 });
    expect(build).toThrow(/relative_attention_bias\.weight' has shape/);
  });
});
