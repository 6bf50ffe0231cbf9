/**
 * The control image in the API, end to end on the real pipeline (worker thread, models/flux-tiny, port 0): a BFL
 * Control LoRA constructed from the spec in a temporary LORA_DIR, `controlImage` over GraphQL (data URL, base64,
 * http URL) and `control_image` over both REST dialects, with the same pixels everywhere; typed errors returned as
 * data (missing / unexpected image, bad base64, private URLs refused by default), and an http URL fetched from a local
 * server by a second server started with CONTROL_IMAGE_ALLOW_PRIVATE_URLS.
 */
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeBflControlLora } from '../../src/cli/conformance/lora-reference.ts';
import { loadConfig } from '../../src/config.ts';
import { writeSafetensors } from '../../src/shared/weights/index.ts';
import { type GenerateImageInput, GenerateWithControlDocument, LoraJobDocument } from '../helpers/gql/graphql.ts';
import { TINY_CONFIG } from '../helpers/lora.ts';
import { FIXTURES_DIR } from '../helpers/paths.ts';
import { pattern } from '../helpers/pattern-image.ts';
import { disposeLeftovers, eventually, gqlData, startTestServer } from '../helpers/test-server.ts';

const tmp = mkdtempSync(join(tmpdir(), 'fluxql-control-api-'));
const loraDir = join(tmp, 'loras');
const CANNY = [{ name: 'canny', strength: 1 }];
/** Server with the default settings (private URLs refused), and one that allows them. */
let url: string;
let allowUrl: string;
/** A local HTTP server with the control images. */
let files: Server;
let filesBase: string;
let pngA: Buffer;
let pngB: Buffer;
let jpegWide: Buffer;

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;

beforeAll(async () => {
  mkdirSync(loraDir, { recursive: true });
  writeSafetensors(
    join(loraDir, 'canny.safetensors'),
    makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 }),
  );
  copyFileSync(join(FIXTURES_DIR, 'lora_0_diffusers.safetensors'), join(loraDir, 'plain.safetensors'));
  [pngA, pngB] = await Promise.all([pattern(64, 64, 0), pattern(64, 64, 1.5)]);
  jpegWide = await sharp(await pattern(96, 80, 0.7))
    .jpeg()
    .toBuffer();
  files = createServer((req, res) => {
    if (req.url === '/a.png') res.writeHead(200, { 'content-type': 'image/png' }).end(pngA);
    else if (req.url === '/redirect') res.writeHead(302, { location: '/a.png' }).end();
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
  filesBase = `http://127.0.0.1:${(files.address() as AddressInfo).port}`;

  ({ url } = await startTestServer({ loraDir, modelBatch: 4 }));
  ({ url: allowUrl } = await startTestServer({
    loraDir,
    modelBatch: 4,
    ...loadConfigFlag({ CONTROL_IMAGE_ALLOW_PRIVATE_URLS: '1' }),
  }));
});

afterAll(async () => {
  await disposeLeftovers();
  files?.closeAllConnections();
  await new Promise((resolve) => files?.close(resolve));
  rmSync(tmp, { recursive: true, force: true });
});

/** The flag as the environment sets it (through `loadConfig`, as a deployment would). */
function loadConfigFlag(env: Record<string, string>) {
  return { controlImageAllowPrivateUrls: loadConfig(env).controlImageAllowPrivateUrls };
}

const input = (extra: Partial<GenerateImageInput> = {}): GenerateImageInput => ({
  prompt: 'a red fox in the snow',
  seed: 7,
  width: 64,
  height: 64,
  steps: 2,
  outputFormat: 'PNG',
  loras: CANNY,
  ...extra,
});

async function submit(base: string, inp: GenerateImageInput) {
  return (await gqlData(base, GenerateWithControlDocument, { input: inp })).generateImage;
}

/** Generates over GraphQL; returns the raw RGB pixels of every image and the job record. */
async function generate(inp: GenerateImageInput, base = url) {
  const r = await submit(base, inp);
  if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
  expect(r.data.hasControlImage).toBe(inp.controlImage != null);
  const job = await eventually(async () => {
    const { job } = await gqlData(base, LoraJobDocument, { id: r.data.jobId });
    if (job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(job));
    if (job.data.status === 'FAILED') return job.data;
    if (job.data.status !== 'SUCCEEDED') throw new Error(`job is ${job.data.status}`);
    return job.data;
  });
  expect(job.error).toBeNull();
  const pixels = await Promise.all(
    job.images.map(async (img) => {
      const res = await fetch(img.url);
      expect(res.status).toBe(200);
      return sharp(Buffer.from(await res.arrayBuffer()))
        .raw()
        .toBuffer();
    }),
  );
  return { job, pixels };
}

/** The ValidationError a refused submission returns as data. */
async function refusal(inp: GenerateImageInput, base = url) {
  const r = await submit(base, inp);
  if (r.__typename !== 'ValidationError') throw new Error(`expected a ValidationError: ${JSON.stringify(r)}`);
  return { field: r.field, code: r.code };
}

const post = (body: Record<string, unknown>, base = url) =>
  fetch(`${base}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

describe('controlImage over GraphQL', () => {
  it('generates with a data URL, base64 or another image; the image changes the output', async () => {
    const a = await generate(input({ controlImage: dataUrl(pngA) }));
    expect(a.pixels).toHaveLength(1);
    // Bare base64 of the same file: the same image.
    const again = await generate(input({ controlImage: pngA.toString('base64') }));
    expect(again.pixels[0]?.equals(a.pixels[0]!)).toBe(true);
    // Another control image, and one of another size and format (resized to the output size): other images.
    const b = await generate(input({ controlImage: dataUrl(pngB) }));
    expect(b.pixels[0]?.equals(a.pixels[0]!)).toBe(false);
    const wide = await generate(input({ controlImage: `data:image/jpeg;base64,${jpegWide.toString('base64')}` }));
    expect(wide.pixels[0]?.equals(a.pixels[0]!)).toBe(false);
    expect(wide.pixels[0]?.equals(b.pixels[0]!)).toBe(false);

    // Two images of one job share one control image (it crosses to the worker thread once, and both samples get
    // it). Image 0 is the single-image result up to float rounding: LoRA engines run a batch of 2 with other GEMM
    // blocking than a batch of 1 (about 1e-6 on the latents), which may move a pixel by one level.
    const two = await generate(input({ controlImage: dataUrl(pngA), numImages: 2 }));
    expect(two.pixels).toHaveLength(2);
    const maxPixelDiff = (x: Buffer, y: Buffer) => x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i]!)), 0);
    expect(maxPixelDiff(two.pixels[0]!, a.pixels[0]!)).toBeLessThanOrEqual(1);
    expect(maxPixelDiff(two.pixels[1]!, a.pixels[0]!)).toBeGreaterThan(10);
  });

  it('returns typed errors as data for a missing, unexpected or malformed control image', async () => {
    // A control LoRA without an image; an image without a control LoRA (no LoRAs, or a plain one).
    expect(await refusal(input())).toEqual({ field: 'controlImage', code: 'missing' });
    expect(await refusal(input({ loras: [], controlImage: dataUrl(pngA) }))).toEqual({
      field: 'controlImage',
      code: 'unexpected',
    });
    expect(await refusal(input({ loras: [{ name: 'plain', strength: 1 }], controlImage: dataUrl(pngA) }))).toEqual({
      field: 'controlImage',
      code: 'unexpected',
    });
    // Not base64, base64 of something that is not an image, a scheme we do not fetch, an empty string.
    expect(await refusal(input({ controlImage: 'this is not base64!' }))).toEqual({
      field: 'controlImage',
      code: 'invalid_input',
    });
    expect(await refusal(input({ controlImage: Buffer.from('hello world').toString('base64') }))).toEqual({
      field: 'controlImage',
      code: 'invalid_image',
    });
    expect(await refusal(input({ controlImage: 'file:///etc/passwd' }))).toEqual({
      field: 'controlImage',
      code: 'unsupported_url',
    });
    expect((await refusal(input({ controlImage: '  ' }))).field).toBe('controlImage');
    // The server kept serving.
    expect((await generate(input({ controlImage: dataUrl(pngA) }))).pixels).toHaveLength(1);
  });

  it('refuses URLs on loopback and private networks by default, with code forbidden_url', async () => {
    for (const target of [`${filesBase}/a.png`, 'http://localhost:9/a.png', 'http://10.0.0.1/a.png']) {
      expect(await refusal(input({ controlImage: target }))).toEqual({ field: 'controlImage', code: 'forbidden_url' });
    }
    const res = await post({ prompt: 'x', width: 64, height: 64, loras: CANNY, control_image: `${filesBase}/a.png` });
    const err = ((await res.json()) as { error: Record<string, unknown> }).error;
    expect([res.status, err.param, err.code]).toEqual([400, 'control_image', 'forbidden_url']);
  });

  it('fetches http URLs (redirects too) where CONTROL_IMAGE_ALLOW_PRIVATE_URLS allows them', async () => {
    const fromData = await generate(input({ controlImage: dataUrl(pngA) }), allowUrl);
    const fromUrl = await generate(input({ controlImage: `${filesBase}/a.png` }), allowUrl);
    expect(fromUrl.pixels[0]?.equals(fromData.pixels[0]!)).toBe(true);
    const redirected = await generate(input({ controlImage: `${filesBase}/redirect` }), allowUrl);
    expect(redirected.pixels[0]?.equals(fromData.pixels[0]!)).toBe(true);
    // Same request on the default server (same engine, same seed): the same pixels.
    const here = await generate(input({ controlImage: dataUrl(pngA) }));
    expect(here.pixels[0]?.equals(fromData.pixels[0]!)).toBe(true);
    expect(await refusal(input({ controlImage: `${filesBase}/missing.png` }), allowUrl)).toEqual({
      field: 'controlImage',
      code: 'fetch_failed',
    });
  });
});

describe('control_image over REST', () => {
  let common: Record<string, unknown>;
  beforeAll(() => {
    common = {
      prompt: 'a red fox in the snow',
      seed: 7,
      loras: CANNY,
      num_inference_steps: 2,
      control_image: dataUrl(pngA),
    };
  });

  it('gives the GraphQL pixels in both dialects', async () => {
    // OpenAI dialect: PNG, lossless, against GraphQL's PNG.
    const gqlPng = await generate(input({ controlImage: dataUrl(pngA) }));
    const res = await post({ ...common, size: '64x64', n: 1, response_format: 'b64_json' });
    expect(res.status).toBe(200);
    const json = (await res.json()) as { data: { b64_json: string }[] };
    const openai = await sharp(Buffer.from(json.data[0]?.b64_json ?? '', 'base64'))
      .raw()
      .toBuffer();
    expect(openai.equals(gqlPng.pixels[0]!)).toBe(true);

    // TheStage dialect: WebP bytes, against GraphQL's WebP.
    const gqlWebp = await generate(input({ controlImage: pngA.toString('base64'), outputFormat: 'WEBP' }));
    const stage = await post({ ...common, control_image: pngA.toString('base64'), width: 64, height: 64 });
    expect([stage.status, stage.headers.get('content-type')]).toEqual([200, 'image/webp']);
    const stagePixels = await sharp(Buffer.from(await stage.arrayBuffer()))
      .raw()
      .toBuffer();
    expect(stagePixels.equals(gqlWebp.pixels[0]!)).toBe(true);
  });

  it('takes a body far above the 1 MiB of other requests for a large control image, over GraphQL too', async () => {
    const noise = await sharp(randomBytes(1024 * 1024 * 3), { raw: { width: 1024, height: 1024, channels: 3 } })
      .png()
      .toBuffer();
    expect(noise.length).toBeGreaterThan(2 * 1024 * 1024);
    const res = await post({ ...common, control_image: dataUrl(noise), size: '64x64', n: 1 });
    expect(res.status).toBe(200);
    expect((await generate(input({ controlImage: noise.toString('base64') }))).pixels).toHaveLength(1);
  });

  it('answers a bad or missing control image with 400 and param "control_image"', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ control_image: 'this is not base64!' }, 'invalid_input'],
      [{ control_image: 42 }, 'invalid_value'],
      [{ control_image: undefined }, 'missing'],
      [{ loras: [] }, 'unexpected'],
    ];
    for (const [extra, code] of cases) {
      for (const dialect of [{}, { n: 1 }]) {
        const res = await post({ ...common, width: 64, height: 64, ...extra, ...dialect });
        const err = ((await res.json()) as { error: Record<string, unknown> }).error;
        expect([extra, res.status, err.param, err.code, err.type]).toEqual([
          extra,
          400,
          'control_image',
          code,
          'invalid_request_error',
        ]);
      }
    }
  });
});
