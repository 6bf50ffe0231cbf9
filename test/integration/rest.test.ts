/**
 * REST `POST /v1/images/generations` in TheStage and OpenAI dialects, against the real pipeline, with
 * AUTH_TOKEN set. The OpenAI dialect is exercised with the unmodified `openai` npm client.
 */
import OpenAI from 'openai';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelsDocument } from '../helpers/gql/graphql.ts';
import { collectWs, disposeLeftovers, metricValue, startTestServer, wsClient } from '../helpers/test-server.ts';

const TOKEN = 'test-token-123';
let url: string;
let client: OpenAI;

beforeAll(async () => {
  ({ url } = await startTestServer({ authToken: TOKEN, modelBatch: 2 }));
  // maxRetries 0: the client retries 429/5xx by default, which would hide what the server answered.
  client = new OpenAI({ apiKey: TOKEN, baseURL: `${url}/v1`, maxRetries: 0 });
});
afterAll(disposeLeftovers);

function thestage(body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${TOKEN}`,
      'x-model-name': 'flux-1-dev-original-bs2',
      'content-type': 'application/json',
      ...headers,
    },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

describe('TheStage dialect', () => {
  it('returns WebP bytes of the aspect ratio size by default', async () => {
    const res = await thestage({
      prompt: 'a kitten eating a banana',
      seed: 42,
      aspect_ratio: '21:9',
      guidance_scale: 6.5,
      num_inference_steps: 2,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/webp');
    expect(res.headers.get('x-seed')).toBe('42');
    const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['webp', 1280, 544]);
  });

  it('refuses a missing or wrong token with 401 in the OpenAI error shape', async () => {
    for (const auth of ['Bearer wrong', '']) {
      const res = await thestage({ prompt: 'x' }, { authorization: auth });
      expect(res.status).toBe(401);
      expect(await res.json()).toMatchObject({ error: { code: 'invalid_api_key', type: 'invalid_request_error' } });
    }
  });

  it('gives typed 4xx errors for bad input and keeps serving', async () => {
    const cases: [unknown, Record<string, string>, number, string | null][] = [
      ['{"prompt": "x",', {}, 400, null],
      [{ prompt: 'x', aspect_ratio: '7:3' }, {}, 400, 'aspect_ratio'],
      [{ prompt: '' }, {}, 400, 'prompt'],
      [{ prompt: 'x'.repeat(100_000) }, {}, 400, 'prompt'],
      [{ prompt: 'x', num_inference_steps: 0 }, {}, 400, 'num_inference_steps'],
      [{ prompt: 'x', num_inference_steps: 500 }, {}, 400, 'num_inference_steps'],
      [{ prompt: 'x' }, { 'x-model-name': 'flux-1-dev-xxl-bs2' }, 404, 'model'],
    ];
    for (const [body, headers, status, param] of cases) {
      const res = await thestage(body, headers);
      expect(res.status).toBe(status);
      const json = (await res.json()) as { error: { param: string | null; message: string } };
      expect(json.error.param).toBe(param);
      expect(json.error.message.length).toBeGreaterThan(0);
    }
    expect(await metricValue(url, 'fluxql_errors_total')).toBeGreaterThanOrEqual(cases.length);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });
});

describe('OpenAI dialect (official openai client)', () => {
  it('returns b64_json images of the requested size and format', async () => {
    const res = await client.images.generate({
      model: 'flux-1-dev-original-bs2',
      prompt: 'a watercolor fox',
      n: 2,
      size: '80x64',
      output_format: 'png',
      response_format: 'b64_json',
    });
    expect(res.data).toHaveLength(2);
    const [a, b] = await Promise.all(
      (res.data ?? []).map((d) => sharp(Buffer.from(d.b64_json ?? '', 'base64')).metadata()),
    );
    expect([a?.format, a?.width, a?.height]).toEqual(['png', 80, 64]);
    expect(b?.format).toBe('png');
  });

  it('returns stable URLs with response_format url', async () => {
    const res = await client.images.generate({
      model: 'flux-1-dev-original-bs2',
      prompt: 'a paper boat',
      size: '64x64',
      output_format: 'webp',
      response_format: 'url',
    });
    const imageUrl = res.data?.[0]?.url ?? '';
    expect(imageUrl.startsWith(url)).toBe(true);
    const img = await fetch(imageUrl);
    expect(img.headers.get('content-type')).toBe('image/webp');
    expect(img.headers.get('cache-control')).toContain('max-age');
  });

  it('maps errors to OpenAI error classes with param and code', async () => {
    const bad = await client.images
      .generate({ model: 'flux-1-dev-original-bs2', prompt: 'x', size: '100x100' })
      .catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect((bad as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('size');

    const unknown = await client.images.generate({ model: 'dall-e-3', prompt: 'x' }).catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(OpenAI.NotFoundError);
    expect((unknown as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('model_not_found');

    const anon = new OpenAI({ apiKey: 'wrong', baseURL: `${url}/v1`, maxRetries: 0 });
    const denied = await anon.images.generate({ prompt: 'x', size: '64x64' }).catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it('lists the models', async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toContain('flux-1-dev-original-bs2');
  });
});

describe('AUTH_TOKEN on GraphQL', () => {
  it('requires the bearer token over HTTP and in graphql-ws connection_init', async () => {
    const query = JSON.stringify({ query: '{ models { id } }' });
    const post = (headers: Record<string, string>) =>
      fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: query,
      });
    expect((await post({})).status).toBe(401);
    expect((await post({ authorization: `Bearer ${TOKEN}` })).status).toBe(200);

    const denied = await collectWs(wsClient(url), ModelsDocument, {}).catch((e: { code?: number }) => e);
    expect((denied as { code?: number }).code).toBe(4403);
    const ok = await collectWs(wsClient(url, { authorization: `Bearer ${TOKEN}` }), ModelsDocument, {});
    expect(ok[0]?.data?.models[0]?.id).toBe('flux-1-dev-original-bs2');
  });
});
