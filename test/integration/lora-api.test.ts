/**
 * The LoRA API end to end against the real pipeline (worker thread, models/flux-tiny) on port 0: the `loras` query,
 * `loadLora` / `unloadLora` on the default set, per-request `loras` over GraphQL and both REST dialects, typed
 * errors for bad files and escaping names, batching only by identical LoRA sets, and no new ORT session when
 * switching LoRAs. LORA_DIR is a temporary copy of the shared fixtures' LoRAs plus two broken files.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ActiveLorasDocument,
  type GenerateImageInput,
  GenerateWithLorasDocument,
  LoadLoraDocument,
  LoraJobDocument,
  LorasDocument,
  UnloadLoraDocument,
} from '../helpers/gql/graphql.ts';
import { D, t, writeLora } from '../helpers/lora.ts';
import { FIXTURES_DIR } from '../helpers/paths.ts';
import { disposeLeftovers, eventually, gqlData, metricValue, startTestServer } from '../helpers/test-server.ts';

const FIXTURE_LORAS = ['lora_0_diffusers', 'lora_1_xlabs', 'lora_2_kohya'] as const;
const tmp = mkdtempSync(join(tmpdir(), 'fluxql-lora-api-'));
const loraDir = join(tmp, 'loras');
let url: string;

beforeAll(async () => {
  mkdirSync(loraDir, { recursive: true });
  for (const name of FIXTURE_LORAS) {
    copyFileSync(join(FIXTURES_DIR, `${name}.safetensors`), join(loraDir, `${name}.safetensors`));
  }
  // A cut-off copy of a good file, and a diffusers LoRA whose down factor is one column too wide for the model.
  const good = readFileSync(join(FIXTURES_DIR, 'lora_0_diffusers.safetensors'));
  writeFileSync(join(loraDir, 'bad_truncated.safetensors'), good.subarray(0, 40));
  writeLora(loraDir, 'bad_shapes.safetensors', {
    'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': t([4, D + 1], 1),
    'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': t([D, 4], 2),
  });
  writeFileSync(join(tmp, 'outside.safetensors'), good);
  ({ url } = await startTestServer({ loraDir, modelBatch: 4, maxQueueDelayMs: 20 }));
});
afterAll(async () => {
  await disposeLeftovers();
  rmSync(tmp, { recursive: true, force: true });
});

const input = (extra: Partial<GenerateImageInput> = {}): GenerateImageInput => ({
  prompt: 'a red fox in the snow',
  seed: 7,
  width: 64,
  height: 64,
  steps: 2,
  outputFormat: 'PNG',
  ...extra,
});

async function submit(base: string, inp: GenerateImageInput) {
  const { generateImage: r } = await gqlData(base, GenerateWithLorasDocument, { input: inp });
  if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
  return r.data;
}

async function finished(base: string, jobId: string) {
  return eventually(async () => {
    const { job } = await gqlData(base, LoraJobDocument, { id: jobId });
    if (job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(job));
    if (job.data.status !== 'SUCCEEDED') {
      if (job.data.status === 'FAILED') return job.data; // surfaced by the caller's expectations
      throw new Error(`job ${jobId} is ${job.data.status}`);
    }
    return job.data;
  });
}

/** Raw RGB pixels of an image URL. */
async function pixels(imageUrl: string): Promise<Buffer> {
  const res = await fetch(imageUrl);
  expect(res.status).toBe(200);
  return sharp(Buffer.from(await res.arrayBuffer()))
    .raw()
    .toBuffer();
}

/** Generates one image and returns its pixels and the job record. */
async function generate(inp: GenerateImageInput) {
  const { jobId } = await submit(url, inp);
  const job = await finished(url, jobId);
  expect(job.error).toBeNull();
  const imageUrl = job.images[0]?.url;
  if (!imageUrl) throw new Error(`no image: ${JSON.stringify(job)}`);
  return { job, pixels: await pixels(imageUrl) };
}

async function load(name: string, strength?: number) {
  return (await gqlData(url, LoadLoraDocument, { name, ...(strength !== undefined ? { strength } : {}) })).loadLora;
}

async function active() {
  return (await gqlData(url, ActiveLorasDocument, {})).activeLoras;
}

describe('loras query', () => {
  it('lists the fixture LoRAs with format and rank, and the broken files with their error', async () => {
    const { loras } = await gqlData(url, LorasDocument, {});
    if (loras.__typename !== 'QueryLorasSuccess') throw new Error(JSON.stringify(loras));
    const valid = loras.data.flatMap((l) => (l.__typename === 'LoraFile' ? [l] : []));
    expect(valid.map((l) => [l.name, l.format, l.rank, l.active, l.strength])).toEqual([
      ['lora_0_diffusers.safetensors', 'DIFFUSERS', 4, false, null],
      ['lora_1_xlabs.safetensors', 'XLABS', 8, false, null],
      ['lora_2_kohya.safetensors', 'KOHYA', 4, false, null],
    ]);
    for (const l of valid) {
      expect(l.sizeBytes).toBeGreaterThan(0);
      expect(l.targetedLayers.length).toBe(l.targetedLayerCount);
      expect(l.targetedLayers.length).toBeGreaterThan(0);
    }
    const invalid = loras.data.flatMap((l) => (l.__typename === 'InvalidLoraFile' ? [l] : []));
    expect(invalid.map((l) => [l.name, l.error.code])).toEqual([
      ['bad_shapes.safetensors', 'shape_mismatch'],
      ['bad_truncated.safetensors', 'invalid_file'],
    ]);
    expect(invalid[0]?.error.message).toMatch(/transformer_blocks\.0\.attn\.to_q/);
  });
});

describe('LoRA sets in generation', () => {
  it('changes the output when loaded, equals the per-request set, restores base pixels on unload, no new session', async () => {
    const base = await generate(input());
    expect(base.job.loras).toEqual([]);

    // Default set: loaded by name without the extension; requests without `loras` pick it up at submission.
    const loaded = await load('lora_0_diffusers', 1);
    expect(loaded).toMatchObject({
      __typename: 'MutationLoadLoraSuccess',
      data: { name: 'lora_0_diffusers.safetensors', format: 'DIFFUSERS', rank: 4, active: true, strength: 1 },
    });
    expect(await active()).toEqual([{ name: 'lora_0_diffusers.safetensors', strength: 1 }]);
    const withDefault = await generate(input());
    expect(withDefault.job.loras).toEqual([{ name: 'lora_0_diffusers.safetensors', strength: 1 }]);
    expect(withDefault.pixels.equals(base.pixels)).toBe(false);
    // The LoRA engine is loaded now; from here on switching sets must not create a session.
    const sessions = await metricValue(url, 'fluxql_ort_sessions_created');
    expect(sessions).toBeGreaterThan(0);

    // `[]` opts out of the default set.
    const optOut = await generate(input({ loras: [] }));
    expect(optOut.job.loras).toEqual([]);
    expect(optOut.pixels.equals(base.pixels)).toBe(true);

    const unloaded = (await gqlData(url, UnloadLoraDocument, { name: 'lora_0_diffusers.safetensors' })).unloadLora;
    expect(unloaded).toEqual({ __typename: 'MutationUnloadLoraSuccess', data: { unloaded: true, active: [] } });
    expect(await active()).toEqual([]);

    // The same LoRA per request gives exactly the default-set image.
    const perRequest = await generate(input({ loras: [{ name: 'lora_0_diffusers', strength: 1 }] }));
    expect(perRequest.job.loras).toEqual([{ name: 'lora_0_diffusers.safetensors', strength: 1 }]);
    expect(perRequest.pixels.equals(withDefault.pixels)).toBe(true);

    // Other sets (other formats, a weaker strength, two at once) differ, and cost no session.
    const others = [
      [{ name: 'lora_1_xlabs', strength: 0.8 }],
      [{ name: 'lora_2_kohya', strength: 1 }],
      [{ name: 'lora_0_diffusers', strength: 0.5 }],
      [
        { name: 'lora_0_diffusers', strength: 1 },
        { name: 'lora_2_kohya', strength: 1 },
      ],
    ];
    const outs = [base.pixels, withDefault.pixels];
    for (const loras of others) {
      const out = await generate(input({ loras }));
      for (const seen of outs) expect(out.pixels.equals(seen)).toBe(false);
      outs.push(out.pixels);
    }
    expect(await metricValue(url, 'fluxql_ort_sessions_created')).toBe(sessions);

    // Unloading restored the base model: bit-identical pixels.
    const after = await generate(input());
    expect(after.job.loras).toEqual([]);
    expect(after.pixels.equals(base.pixels)).toBe(true);
    expect(await metricValue(url, 'fluxql_ort_sessions_created')).toBe(sessions);

    // Unloading what is not loaded is not an error.
    const again = (await gqlData(url, UnloadLoraDocument, { name: 'lora_0_diffusers' })).unloadLora;
    expect(again).toEqual({ __typename: 'MutationUnloadLoraSuccess', data: { unloaded: false, active: [] } });
  });
});

describe('typed LoRA errors', () => {
  it('refuses broken files with their code and leaves the default set unchanged', async () => {
    expect(await load('lora_1_xlabs', 0.5)).toMatchObject({ data: { active: true, strength: 0.5 } });
    const before = await active();
    expect(before).toEqual([{ name: 'lora_1_xlabs.safetensors', strength: 0.5 }]);

    const cases = [
      ['bad_truncated', 'invalid_file'],
      ['bad_shapes.safetensors', 'shape_mismatch'],
      ['no_such_lora', 'not_found'],
      ['../outside', 'forbidden_path'],
      ['sub/../../outside.safetensors', 'forbidden_path'],
      [join(tmp, 'outside.safetensors'), 'forbidden_path'],
    ] as const;
    for (const [name, code] of cases) {
      const r = await load(name);
      expect([name, r.__typename, r.__typename === 'LoraError' ? r.code : null]).toEqual([name, 'LoraError', code]);
      expect(await active()).toEqual(before);
    }
    const shapes = await load('bad_shapes');
    expect(shapes.__typename === 'LoraError' && shapes.keys).toContain('transformer_blocks.0.attn.to_q');

    // Input rules are ValidationErrors naming the argument.
    expect(await load('lora_0_diffusers', 11)).toMatchObject({ __typename: 'ValidationError', field: 'strength' });
    expect(await load('  ')).toMatchObject({ __typename: 'ValidationError', field: 'name' });
    expect(await active()).toEqual(before);

    const unload = (await gqlData(url, UnloadLoraDocument, { name: 'lora_1_xlabs' })).unloadLora;
    expect(unload).toMatchObject({ data: { unloaded: true, active: [] } });
  });

  it('refuses bad per-request sets in generateImage as data', async () => {
    const cases: [GenerateImageInput['loras'], string, string][] = [
      [[{ name: 'bad_truncated' }], 'LoraError', 'invalid_file'],
      [[{ name: '../outside' }], 'LoraError', 'forbidden_path'],
      [[{ name: 'nope' }], 'LoraError', 'not_found'],
      [[{ name: 'lora_0_diffusers', strength: 20 }], 'ValidationError', 'loras'],
      [[{ name: 'lora_0_diffusers' }, { name: 'lora_0_diffusers.safetensors' }], 'ValidationError', 'loras'],
    ];
    for (const [loras, type, what] of cases) {
      const { generateImage: r } = await gqlData(url, GenerateWithLorasDocument, { input: input({ loras }) });
      const got = r.__typename === 'LoraError' ? r.code : r.__typename === 'ValidationError' ? r.field : null;
      expect([loras, r.__typename, got]).toEqual([loras, type, what]);
    }
  });
});

describe('REST loras', () => {
  const post = (body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
  const loras = [{ name: 'lora_2_kohya', strength: 1 }];

  it('applies per-request loras in both dialects, the same image as GraphQL', async () => {
    const common = { prompt: 'a red fox in the snow', seed: 7, loras, num_inference_steps: 2 };

    // TheStage dialect: WebP bytes (its format), compared with the same request over GraphQL in WebP.
    const gqlWebp = await generate(input({ loras, outputFormat: 'WEBP' }));
    const stage = await post({ ...common, width: 64, height: 64 });
    expect([stage.status, stage.headers.get('content-type')]).toEqual([200, 'image/webp']);
    const stagePixels = await sharp(Buffer.from(await stage.arrayBuffer()))
      .raw()
      .toBuffer();
    expect(stagePixels.equals(gqlWebp.pixels)).toBe(true);

    // OpenAI dialect: PNG (lossless), against the GraphQL PNG, and unlike the image without the LoRA.
    const gqlPng = await generate(input({ loras }));
    const openaiPixels = async (body: Record<string, unknown>) => {
      const res = await post({ ...body, size: '64x64', n: 1, response_format: 'b64_json' });
      expect(res.status).toBe(200);
      const json = (await res.json()) as { data: { b64_json: string }[] };
      return sharp(Buffer.from(json.data[0]?.b64_json ?? '', 'base64'))
        .raw()
        .toBuffer();
    };
    expect((await openaiPixels(common)).equals(gqlPng.pixels)).toBe(true);
    expect((await openaiPixels({ ...common, loras: [] })).equals(gqlPng.pixels)).toBe(false);
  });

  it('answers bad sets with 400 and param "loras" in the OpenAI error shape', async () => {
    const cases: [unknown, string][] = [
      [[{ name: '../outside' }], 'forbidden_path'],
      [[{ name: 'bad_shapes' }], 'shape_mismatch'],
      [[{ name: 'nope', strength: 1 }], 'not_found'],
      ['lora_0_diffusers', 'invalid_value'],
      [[{ name: 'lora_0_diffusers', strength: 'strong' }], 'invalid_value'],
    ];
    for (const [bad, code] of cases) {
      for (const dialect of [{}, { n: 1 }]) {
        const res = await post({ prompt: 'x', width: 64, height: 64, num_inference_steps: 2, loras: bad, ...dialect });
        const err = ((await res.json()) as { error: Record<string, unknown> }).error;
        expect([bad, res.status, err.param, err.code, err.type]).toEqual([
          bad,
          400,
          'loras',
          code,
          'invalid_request_error',
        ]);
      }
    }
  });
});

describe('batching by LoRA set', () => {
  it('steps together only jobs with the same names and strengths', async () => {
    // Batches of 2 that wait (without bound) for a companion: the first batch starts once two compatible jobs are
    // queued, whatever the timing, so only the LoRA set decides who shares a batch.
    const server = await startTestServer({ loraDir, modelBatch: 2, maxQueueDelayMs: 600_000 });
    const sets = [
      [{ name: 'lora_0_diffusers', strength: 1 }],
      [{ name: 'lora_0_diffusers', strength: 0.5 }],
      [{ name: 'lora_0_diffusers.safetensors', strength: 1 }],
      [{ name: 'lora_0_diffusers', strength: 0.5 }],
    ];
    const ids: string[] = [];
    for (const [i, loras] of sets.entries())
      ids.push((await submit(server.url, input({ seed: 100 + i, loras }))).jobId);
    const jobs = [];
    for (const id of ids) jobs.push(await finished(server.url, id));
    expect(jobs.map((j) => j.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED']);
    const [a, b, c, d] = jobs.map((j) => j.batchId);
    expect(a).toBeTruthy();
    expect(b).toBeTruthy();
    expect(c).toBe(a);
    expect(d).toBe(b);
    expect(b).not.toBe(a);
    expect(await metricValue(server.url, 'fluxql_batches_total')).toBe(2);
    expect(await metricValue(server.url, 'fluxql_batch_joins_total')).toBe(0);
  });
});
