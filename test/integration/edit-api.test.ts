/**
 * Image editing and true CFG through the API, end to end on the real pipeline (models/flux-tiny, port 0): GraphQL
 * `generateImage` with `image` / `mask` / `strength` / `negativePrompt` / `trueCfgScale`, the unmodified `openai`
 * client's `images.edit` against `POST /v1/images/edits` (multipart), TheStage's JSON body on the same route, and
 * typed errors naming the field for a mask of another size, a strength outside 0-1, bytes that are not an image
 * and a huge image.
 */

import OpenAI, { toFile } from 'openai';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GenerateImageInput, GenerateWithControlDocument, LoraJobDocument } from '../helpers/gql/graphql.ts';
import { pattern } from '../helpers/pattern-image.ts';
import { disposeLeftovers, eventually, gqlData, startTestServer } from '../helpers/test-server.ts';

let url: string;
let client: OpenAI;
let png64: Buffer;
let mask64: Buffer;
let mask32: Buffer;

/** A white square (repaint) in the middle of a black mask. */
function squareMask(side: number): Promise<Buffer> {
  const data = new Uint8Array(side * side * 3);
  for (let y = side / 4; y < (3 * side) / 4; y++)
    data.fill(255, (y * side + side / 4) * 3, (y * side + (3 * side) / 4) * 3);
  return sharp(data, { raw: { width: side, height: side, channels: 3 } })
    .png()
    .toBuffer();
}

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;

beforeAll(async () => {
  [png64, mask64, mask32] = await Promise.all([pattern(64, 64, 0), squareMask(64), squareMask(32)]);
  ({ url } = await startTestServer({ modelBatch: 4 }));
  client = new OpenAI({ apiKey: 'unused', baseURL: `${url}/v1`, maxRetries: 0 });
}, 600_000);
afterAll(async () => {
  await disposeLeftovers();
});

const input = (extra: Partial<GenerateImageInput> = {}): GenerateImageInput => ({
  prompt: 'a red fox in the snow',
  seed: 7,
  width: 64,
  height: 64,
  steps: 3,
  outputFormat: 'PNG',
  ...extra,
});

async function submit(inp: GenerateImageInput) {
  return (await gqlData(url, GenerateWithControlDocument, { input: inp })).generateImage;
}

/** Generates over GraphQL; returns the raw RGB pixels of the first image. */
async function generate(inp: GenerateImageInput): Promise<Buffer> {
  const r = await submit(inp);
  if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
  const job = await eventually(async () => {
    const { job } = await gqlData(url, LoraJobDocument, { id: r.data.jobId });
    if (job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(job));
    if (job.data.status === 'FAILED') return job.data;
    if (job.data.status !== 'SUCCEEDED') throw new Error(`job is ${job.data.status}`);
    return job.data;
  });
  expect(job.error).toBeNull();
  const res = await fetch(job.images[0]!.url);
  return sharp(Buffer.from(await res.arrayBuffer()))
    .removeAlpha()
    .raw()
    .toBuffer();
}

async function refusal(inp: GenerateImageInput) {
  const r = await submit(inp);
  if (r.__typename !== 'ValidationError') throw new Error(`expected a ValidationError: ${JSON.stringify(r)}`);
  return { field: r.field, code: r.code };
}

/** Mean absolute difference of two equally sized byte buffers. */
function meanDiff(a: Buffer, b: Buffer): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
  return s / a.length;
}

describe('GraphQL', () => {
  it('img2img is deterministic and depends on the input image and the strength', async () => {
    const other = await pattern(64, 64, 2.5);
    const low = await generate(input({ image: dataUrl(png64), strength: 0.34 }));
    const again = await generate(input({ image: dataUrl(png64), strength: 0.34 }));
    const otherImage = await generate(input({ image: dataUrl(other), strength: 0.34 }));
    const full = await generate(input({ image: dataUrl(png64), strength: 1 }));
    const t2i = await generate(input());
    expect(again.equals(low)).toBe(true);
    expect(otherImage.equals(low)).toBe(false);
    expect(full.equals(low)).toBe(false);
    expect(full.equals(t2i)).toBe(false); // strength 1 still starts from the image's latents (σ₀ < 1)
  });

  it('inpainting keeps the unmasked region close to the image and repaints the masked one', async () => {
    const source = await sharp(png64).raw().toBuffer();
    const out = await generate(input({ image: dataUrl(png64), mask: dataUrl(mask64), strength: 1 }));
    const region = (buf: Buffer, inside: boolean) => {
      const picked: number[] = [];
      for (let y = 0; y < 64; y++) {
        for (let x = 0; x < 64; x++) {
          const m = y >= 16 && y < 48 && x >= 16 && x < 48;
          if (m === inside) for (let c = 0; c < 3; c++) picked.push(buf[(y * 64 + x) * 3 + c]!);
        }
      }
      return Buffer.from(picked);
    };
    expect(meanDiff(region(out, false), region(source, false))).toBeLessThan(
      meanDiff(region(out, true), region(source, true)),
    );
  });

  it('true CFG with a negative prompt changes the image; trueCfgScale 1 leaves it as text-to-image', async () => {
    const plain = await generate(input());
    const off = await generate(input({ negativePrompt: 'blurry', trueCfgScale: 1 }));
    const on = await generate(input({ negativePrompt: 'blurry', trueCfgScale: 3 }));
    expect(off.equals(plain)).toBe(true);
    expect(on.equals(plain)).toBe(false);
  });

  it('names the field of bad edit input', async () => {
    expect(await refusal(input({ image: dataUrl(png64), mask: dataUrl(mask32) }))).toEqual({
      field: 'mask',
      code: 'size_mismatch',
    });
    expect((await refusal(input({ image: dataUrl(png64), strength: 1.5 }))).field).toBe('strength');
    expect((await refusal(input({ image: dataUrl(png64), strength: -0.5 }))).field).toBe('strength');
    expect((await refusal(input({ strength: 0.5 }))).field).toBe('strength');
    expect((await refusal(input({ mask: dataUrl(mask64) }))).field).toBe('mask');
    expect(await refusal(input({ image: Buffer.from('not an image at all').toString('base64') }))).toMatchObject({
      field: 'image',
      code: 'invalid_image',
    });
    const huge = await sharp({ create: { width: 4200, height: 4200, channels: 3, background: '#808080' } })
      .png()
      .toBuffer();
    expect(await refusal(input({ image: dataUrl(huge) }))).toEqual({ field: 'image', code: 'too_large' });
  });
});

describe('REST /v1/images/edits', () => {
  it('works with the official openai client, unmodified (multipart image + mask)', async () => {
    const res = await client.images.edit({
      image: await toFile(png64, 'image.png', { type: 'image/png' }),
      mask: await toFile(mask64, 'mask.png', { type: 'image/png' }),
      prompt: 'a blue door',
      n: 2,
      size: '64x64' as never,
      response_format: 'b64_json',
    });
    expect(res.data).toHaveLength(2);
    for (const d of res.data ?? []) {
      const meta = await sharp(Buffer.from(d.b64_json!, 'base64')).metadata();
      expect(meta).toMatchObject({ width: 64, height: 64 });
    }
  });

  it('maps bad input to OpenAI errors whose param names the field', async () => {
    const bad = await client.images
      .edit({
        image: await toFile(png64, 'image.png', { type: 'image/png' }),
        mask: await toFile(mask32, 'mask.png', { type: 'image/png' }),
        prompt: 'x',
        size: '64x64' as never,
      })
      .catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect((bad as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('mask');
    const notImage = await client.images
      .edit({ image: await toFile(Buffer.from('hello'), 'a.png', { type: 'image/png' }), prompt: 'x' })
      .catch((e: unknown) => e);
    expect((notImage as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('image');
  });

  it("takes TheStage's JSON body (image as a data URL, strength, negative prompt) and answers the image bytes", async () => {
    const res = await fetch(`${url}/v1/images/edits`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt: 'a lighthouse',
        image: dataUrl(png64),
        strength: 0.7,
        negative_prompt: 'fog',
        true_cfg_scale: 2,
        width: 64,
        height: 64,
        num_inference_steps: 3,
        seed: 3,
      }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/webp');
    const bad = await fetch(`${url}/v1/images/edits`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', image: dataUrl(png64), strength: 2, width: 64, height: 64 }),
    });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toMatchObject({ param: 'strength' });
  });
});
