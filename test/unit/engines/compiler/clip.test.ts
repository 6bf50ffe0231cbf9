/**
 * CLIP text graph: compiled from models/flux-tiny/text_encoder with external data, run through the runtime's
 * Session, compared with transformers' `pooler_output` in text_encoders.safetensors for every fixture prompt.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildClipGraph, type ClipGraphOptions } from '../../../../engines/compiler/flux/clip.ts';
import {
  type ClipTextConfig,
  loadClipTextConfig,
  parseClipTextConfig,
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

const CLIP_DIR = join(MODEL_DIR, 'text_encoder');
const cases = JSON.parse(readFileSync(join(FIXTURES_DIR, 'tokenizer_cases.json'), 'utf8')) as {
  prompt: string;
  clip_input_ids: number[];
}[];
const reference = readSafetensorsF32(join(FIXTURES_DIR, 'text_encoders.safetensors')).pooled_prompt_embeds!;

let tmp: string;
let weights: WeightSource;
let config: ClipTextConfig;
const sessions: Session[] = [];

/** Compiles a CLIP graph into `tmp/<name>.onnx` (+ `.onnx.data`) and loads it. */
async function compile(name: string, cfg: ClipTextConfig, options: ClipGraphOptions = {}): Promise<Session> {
  const path = join(tmp, `${name}.onnx`);
  const data = new ExternalDataWriter(`${path}.data`);
  const b = new GraphBuilder({ name, externalData: data });
  buildClipGraph(b, weights, cfg, options);
  data.close();
  writeFileSync(path, b.encode());
  const s = await Session.create(name, path, { threads: 1 });
  sessions.push(s);
  return s;
}

let legacySession: Session | undefined;
/** The graph of the checkpoint's own config, compiled once. */
async function legacy(): Promise<Session> {
  legacySession ??= await compile('clip', config);
  return legacySession;
}

function ids(rows: number[][]): { data: BigInt64Array; dims: number[] } {
  return { data: BigInt64Array.from(rows.flat().map(BigInt)), dims: [rows.length, rows[0]!.length] };
}

async function pooled(s: Session, rows: number[][]): Promise<Float32Array> {
  const out = await s.run({ input_ids: ids(rows) });
  expect(out.pooled!.dims).toEqual([rows.length, config.hiddenSize]);
  return out.pooled!.data as Float32Array;
}

/** Hides some tensors of a reader, to provoke missing-weight errors. */
function without(w: WeightSource, hidden: string): WeightReader & { path: string } {
  return { path: w.path, has: (n) => n !== hidden && w.has(n), info: (n) => w.info(n), readF32: (n) => w.readF32(n) };
}

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'fluxql-clip-'));
  weights = openComponentWeights(CLIP_DIR);
  config = loadClipTextConfig(CLIP_DIR);
});

afterAll(async () => {
  for (const s of sessions) await s.release();
  weights?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('CLIP text config', () => {
  it('reads flux-tiny text_encoder/config.json', () => {
    const raw = JSON.parse(readFileSync(join(CLIP_DIR, 'config.json'), 'utf8'));
    expect(config).toMatchObject({
      hiddenSize: raw.hidden_size,
      numLayers: raw.num_hidden_layers,
      numHeads: raw.num_attention_heads,
      hiddenAct: raw.hidden_act,
      eosTokenId: raw.eos_token_id,
    });
  });

  it('names the file and field of an invalid config', () => {
    expect(() => parseClipTextConfig({ hidden_size: 32 }, 'x/config.json')).toThrow(
      /x\/config\.json.*num_hidden_layers/,
    );
    const raw = JSON.parse(readFileSync(join(CLIP_DIR, 'config.json'), 'utf8'));
    expect(() => parseClipTextConfig({ ...raw, num_attention_heads: 5 }, 'y.json')).toThrow(/y\.json.*divisible/);
  });
});

describe('buildClipGraph on flux-tiny', () => {
  it('matches transformers pooler_output for every fixture prompt (legacy argmax pooling)', async () => {
    expect(reference.shape).toEqual([cases.length, config.hiddenSize]);
    const s = await legacy();
    let worst = 0;
    for (const [i, c] of cases.entries()) {
      const got = await pooled(s, [c.clip_input_ids]);
      const want = reference.data.subarray(i * config.hiddenSize, (i + 1) * config.hiddenSize);
      const err = relativeError(got, want);
      worst = Math.max(worst, err);
      expect(err, `prompt ${i} ${JSON.stringify(c.prompt)}`).toBeLessThanOrEqual(1e-4);
    }
    console.log(`CLIP pooled: max relative error ${worst.toExponential(2)} over ${cases.length} prompts`);
  });

  it('gives the same rows for a batch as for single runs', async () => {
    const s = await legacy();
    const rows = cases.slice(0, 6).map((c) => c.clip_input_ids);
    const batch = await pooled(s, rows);
    for (const [i, r] of rows.entries()) {
      const single = await pooled(s, [r]);
      expect(
        relativeError(batch.subarray(i * config.hiddenSize, (i + 1) * config.hiddenSize), single),
      ).toBeLessThanOrEqual(1e-6);
    }
  });

  it('pools at the first eos_token_id position for non-legacy configs', async () => {
    // With the real EOS id (49407 = the largest id) the first-match rule and argmax pick the same position.
    const real = await compile('clip_eos', { ...config, eosTokenId: 49407 });
    const rows = cases.slice(0, 4).map((c) => c.clip_input_ids);
    const legacyPooled = await pooled(await legacy(), rows);
    expect(relativeError(await pooled(real, rows), legacyPooled)).toBeLessThanOrEqual(1e-6);

    // Pooling at BOS (position 0): the attention is causal, so that state depends on BOS alone. It must equal the
    // legacy graph run on the one-token sequence [BOS] (argmax at 0), whatever follows in each prompt.
    const bos = rows[0]![0]!;
    const atBos = await pooled(await compile('clip_bos', { ...config, eosTokenId: bos }), rows);
    const oneToken = await pooled(await compile('clip_dyn', config, { seqLen: 'seq' }), [[bos]]);
    for (let i = 0; i < rows.length; i++) {
      expect(
        relativeError(atBos.subarray(i * config.hiddenSize, (i + 1) * config.hiddenSize), oneToken),
      ).toBeLessThanOrEqual(1e-6);
    }
    expect(
      relativeError(atBos.subarray(0, config.hiddenSize), legacyPooled.subarray(0, config.hiddenSize)),
    ).toBeGreaterThan(1e-2);
  });

  it('declares its signature', () => {
    const b = new GraphBuilder({ name: 'sig' });
    const sig = buildClipGraph(b, weights, config);
    expect(sig).toEqual({
      inputs: [{ name: 'input_ids', dtype: 'int64', dims: ['batch', config.maxPositions] }],
      outputs: [{ name: 'pooled', dtype: 'float32', dims: ['batch', config.hiddenSize] }],
    });
  });

  it('accepts text_model.-prefixed checkpoints (FLUX.1-dev) and builds the identical graph', () => {
    const strip = (n: string) => n.replace(/^text_model\./, '');
    const prefixed: WeightReader = {
      has: (n) => n.startsWith('text_model.') && weights.has(strip(n)),
      info: (n) => weights.info(strip(n)),
      readF32: (n) => weights.readF32(strip(n)),
    };
    const plain = new GraphBuilder({ name: 'g' });
    buildClipGraph(plain, weights, config);
    const pre = new GraphBuilder({ name: 'g' });
    buildClipGraph(pre, prefixed, config);
    expect(Buffer.from(pre.encode()).equals(Buffer.from(plain.encode()))).toBe(true);
  });

  it('names a missing tensor and the file', () => {
    const name = 'encoder.layers.1.mlp.fc2.bias';
    const build = () => buildClipGraph(new GraphBuilder({ name: 'm' }), without(weights, name), config);
    expect(build).toThrow(TextEncoderConfigError);
    expect(build).toThrow(new RegExp(`model\\.safetensors.*missing tensor '${name.replace(/\./g, '\\.')}'`));
  });

  it('names a tensor whose shape disagrees with the config', () => {
    const wrong = { ...config, intermediateSize: config.intermediateSize + 5 };
    const build = () => buildClipGraph(new GraphBuilder({ name: 'm' }), weights, wrong);
    const [I, D] = [config.intermediateSize, config.hiddenSize];
    const msg = `'encoder.layers.0.mlp.fc1.weight' has shape [${I},${D}], config implies [${I + 5},${D}]`;
    expect(build).toThrow(msg);
  });
});
