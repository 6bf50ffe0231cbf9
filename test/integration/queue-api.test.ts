/**
 * The queue API (`/v1/queue/...`) and its signed webhooks over real HTTP: a round trip on the real tiny pipeline
 * with a webhook received by a local HTTP server (signature checked), a retry after the receiver's 500, refusal of
 * private webhook URLs, and, with the fake executor holding or failing steps, queue positions, cancel and failure.
 */
import { createHmac } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFakeExecutor } from '../helpers/fake-executor.ts';
import { pattern } from '../helpers/pattern-image.ts';
import { disposeLeftovers, eventually, startTestServer } from '../helpers/test-server.ts';

const SECRET = 'queue-test-secret-0123456789';

interface Hook {
  headers: IncomingHttpHeaders;
  raw: string;
  body: {
    request_id: string;
    status: string;
    payload: { data: { b64_json?: string; url?: string }[] } | null;
    error: { code: string } | null;
    timestamp: number;
  };
}

/** A webhook receiver on 127.0.0.1: records every POST and answers the next status of `answers` (then 200). */
async function startReceiver(answers: number[] = []) {
  const hooks: Hook[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      hooks.push({ headers: req.headers, raw, body: JSON.parse(raw) });
      res.writeHead(answers.shift() ?? 200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  return { url, hooks, close: () => new Promise<void>((r) => server.close(() => r())) };
}

function verifySignature(hook: Hook): boolean {
  const expected = `sha256=${createHmac('sha256', SECRET).update(hook.raw).digest('hex')}`;
  return hook.headers['x-fluxql-signature'] === expected;
}

async function post(url: string, body: unknown) {
  const res = await fetch(`${url}/v1/queue/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return {
    status: res.status,
    json: (await res.json()) as Record<string, unknown> & { error?: Record<string, unknown> },
  };
}

const getJson = async (u: string, init?: RequestInit) => {
  const res = await fetch(u, init);
  return {
    status: res.status,
    json: (await res.json()) as Record<string, unknown> & { error?: Record<string, unknown> },
  };
};

afterAll(disposeLeftovers);

describe('queue API on the real pipeline', () => {
  let url: string;
  let imageDir: string;
  beforeAll(async () => {
    ({
      url,
      config: { imageDir },
    } = await startTestServer({
      webhookSecret: SECRET,
      webhookAllowPrivateUrls: true,
      webhookRetryBaseMs: 50,
    }));
  });

  it('submits, reports status, returns the OpenAI-shaped result and POSTs a signed webhook', async () => {
    const receiver = await startReceiver();
    try {
      const submitted = await post(url, {
        prompt: 'a paper boat',
        size: '64x64',
        num_inference_steps: 2,
        seed: 3,
        webhook_url: receiver.url,
      });
      expect(submitted.status).toBe(202);
      const s = submitted.json as Record<string, string>;
      expect(s.request_id).toMatch(/^[0-9a-f-]{36}$/);
      expect(s.status_url).toBe(`${url}/v1/queue/requests/${s.request_id}/status`);
      expect(s.response_url).toBe(`${url}/v1/queue/requests/${s.request_id}`);
      expect(s.cancel_url).toBe(`${url}/v1/queue/requests/${s.request_id}/cancel`);

      const seen = new Set<string>();
      const final = await eventually(async () => {
        const { json } = await getJson(s.status_url as string);
        seen.add(json.status as string);
        expect(json.status).toBe('COMPLETED');
        return json;
      });
      expect([...seen].every((x) => ['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED'].includes(x))).toBe(true);
      expect(final.request_id).toBe(s.request_id);

      const result = await getJson(s.response_url as string);
      expect(result.status).toBe(200);
      const data = result.json.data as { b64_json: string }[];
      expect(data).toHaveLength(1);
      const meta = await sharp(Buffer.from(data[0]?.b64_json ?? '', 'base64')).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 64]);
      expect(result.json.size).toBe('64x64');

      const hook = await eventually(() => {
        expect(receiver.hooks).toHaveLength(1);
        return receiver.hooks[0] as Hook;
      });
      expect(verifySignature(hook)).toBe(true);
      expect(hook.headers['x-fluxql-timestamp']).toBe(String(hook.body.timestamp));
      expect(hook.body).toMatchObject({ request_id: s.request_id, status: 'OK', error: null });
      // The webhook carries the same image the response URL gives.
      expect(hook.body.payload?.data[0]?.b64_json).toBe(data[0]?.b64_json);
      // A tampered body no longer matches the signature.
      expect(verifySignature({ ...hook, raw: hook.raw.replace('"OK"', '"ERROR"') })).toBe(false);
    } finally {
      await receiver.close();
    }
  });

  it("queues an edit in OpenAI's multipart shape: the same image as the synchronous edit route, webhook included", async () => {
    const receiver = await startReceiver();
    try {
      const png = await pattern(64, 64, 1);
      const form = (extra: Record<string, string>) => {
        const f = new FormData();
        f.append('image', new Blob([new Uint8Array(png)], { type: 'image/png' }), 'in.png');
        for (const [k, v] of Object.entries({
          prompt: 'a paper boat',
          size: '64x64',
          num_inference_steps: '4',
          seed: '5',
          strength: '0.5',
          ...extra,
        }))
          f.append(k, v);
        return f;
      };
      const res = await fetch(`${url}/v1/queue/images/edits`, {
        method: 'POST',
        body: form({ webhook_url: receiver.url }),
      });
      expect(res.status).toBe(202);
      const s = (await res.json()) as Record<string, string>;
      await eventually(async () => expect((await getJson(s.status_url as string)).json.status).toBe('COMPLETED'));
      const queued = ((await getJson(s.response_url as string)).json.data as { b64_json: string }[])[0]?.b64_json;
      const sync = await fetch(`${url}/v1/images/edits`, { method: 'POST', body: form({}) });
      expect(sync.status).toBe(200);
      const direct = ((await sync.json()) as { data: { b64_json: string }[] }).data[0]?.b64_json;
      // An edit (strength 0.5 of 4 steps) starts from the image: same pixels on both routes for one seed.
      expect(queued).toBeDefined();
      expect(queued).toBe(direct);
      const hook = await eventually(() => {
        expect(receiver.hooks).toHaveLength(1);
        return receiver.hooks[0] as Hook;
      });
      expect(hook.body.payload?.data[0]?.b64_json).toBe(queued);
      // The edit route names its missing input image, and nothing is queued.
      const bad = await fetch(`${url}/v1/queue/images/edits`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'x', size: '64x64' }),
      });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { param: string } }).error.param).toBe('image');
    } finally {
      await receiver.close();
    }
  });

  it('retries a webhook the receiver answered with 500, with backoff', async () => {
    const receiver = await startReceiver([500]);
    try {
      const { json } = await post(url, {
        prompt: 'retry me',
        size: '64x64',
        num_inference_steps: 1,
        response_format: 'url',
        webhook_url: receiver.url,
      });
      expect(json.response_url).toMatch(/\?response_format=url$/);
      const hooks = await eventually(() => {
        expect(receiver.hooks).toHaveLength(2);
        return receiver.hooks;
      });
      expect(hooks.map((h) => h.headers['x-fluxql-attempt'])).toEqual(['1', '2']);
      expect(hooks.every(verifySignature)).toBe(true);
      expect(hooks[1]?.body.payload?.data[0]?.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/images\//);
      // Delivered: no third attempt follows.
      await new Promise((r) => setTimeout(r, 300));
      expect(receiver.hooks).toHaveLength(2);
    } finally {
      await receiver.close();
    }
  });

  it('answers 410 image_expired once the image cleanup removed the files', async () => {
    const { json } = await post(url, { prompt: 'short-lived', size: '64x64', num_inference_steps: 1 });
    await eventually(async () => expect((await getJson(json.status_url as string)).json.status).toBe('COMPLETED'));
    for (const name of await readdir(imageDir)) {
      if (name.startsWith(json.request_id as string)) await rm(join(imageDir, name));
    }
    const gone = await getJson(json.response_url as string);
    expect(gone.status).toBe(410);
    expect(gone.json.error).toMatchObject({ code: 'image_expired' });
  });

  it('answers 404 for an unknown request and 405 for a wrong method', async () => {
    expect((await getJson(`${url}/v1/queue/requests/nope/status`)).status).toBe(404);
    expect((await getJson(`${url}/v1/queue/images/generations`)).status).toBe(405);
  });
});

describe('queue API: positions, cancel and failures (fake executor holding steps)', () => {
  let url: string;
  let release: () => void = () => {};
  let gate: Promise<void> = new Promise((r) => {
    release = r;
  });
  beforeAll(async () => {
    const executor = createFakeExecutor({ gate: () => gate, failOnPrompt: 'boom', maxBatch: 1 });
    ({ url } = await startTestServer(
      { webhookSecret: SECRET, webhookAllowPrivateUrls: true, webhookRetryBaseMs: 50, modelBatch: 1 },
      { executor },
    ));
  });

  it('shows IN_PROGRESS and IN_QUEUE, refuses the result while in progress, and cancels a queued request', async () => {
    const running = (await post(url, { prompt: 'first', size: '64x64', num_inference_steps: 3 })).json as Record<
      string,
      string
    >;
    await eventually(async () => {
      const { json } = await getJson(running.status_url as string);
      expect(json).toMatchObject({ status: 'IN_PROGRESS', step: 0, total_steps: 3 });
    });
    const early = await getJson(running.response_url as string);
    expect(early.status).toBe(400);
    expect(early.json.error).toMatchObject({ code: 'request_in_progress' });

    const waiting = (await post(url, { prompt: 'second', size: '64x64', num_inference_steps: 3 })).json as Record<
      string,
      string
    >;
    expect(waiting).toMatchObject({ status: 'IN_QUEUE', queue_position: 0 });
    const third = (await post(url, { prompt: 'third', size: '64x64', num_inference_steps: 3 })).json;
    expect(third.queue_position).toBe(1);

    const cancel = await getJson(waiting.cancel_url as string, { method: 'PUT' });
    expect(cancel).toEqual({ status: 202, json: { status: 'CANCELLATION_REQUESTED' } });
    const status = await getJson(waiting.status_url as string);
    expect(status.json).toMatchObject({ status: 'FAILED', error: { code: 'canceled' } });
    expect((await getJson(waiting.response_url as string)).status).toBe(409);
    const again = await getJson(waiting.cancel_url as string, { method: 'POST' });
    expect(again.status).toBe(400);
    expect(again.json.status).toBe('ALREADY_COMPLETED');

    // The third moved up to the head of the queue.
    const moved = await getJson(`${url}/v1/queue/requests/${third.request_id}/status`);
    expect(moved.json).toMatchObject({ status: 'IN_QUEUE', queue_position: 0 });

    release();
    gate = Promise.resolve();
    await eventually(async () => {
      expect((await getJson(running.status_url as string)).json.status).toBe('COMPLETED');
      expect((await getJson(third.status_url as string)).json.status).toBe('COMPLETED');
    });
    expect((await getJson(running.response_url as string)).status).toBe(200);
  });

  it('reports a failed job as FAILED, answers its result with the error, and webhooks an ERROR', async () => {
    const receiver = await startReceiver();
    try {
      const { json } = await post(url, {
        prompt: 'boom',
        size: '64x64',
        num_inference_steps: 2,
        webhook_url: receiver.url,
      });
      const status = await eventually(async () => {
        const s = await getJson(json.status_url as string);
        expect(s.json.status).toBe('FAILED');
        return s.json;
      });
      expect(status.error).toMatchObject({ code: 'generation_failed' });
      const result = await getJson(json.response_url as string);
      expect(result.status).toBe(500);
      expect(result.json.error).toMatchObject({ code: 'generation_failed' });
      const hook = await eventually(() => {
        expect(receiver.hooks).toHaveLength(1);
        return receiver.hooks[0] as Hook;
      });
      expect(verifySignature(hook)).toBe(true);
      expect(hook.body).toMatchObject({
        request_id: json.request_id,
        status: 'ERROR',
        payload: null,
        error: { code: 'generation_failed' },
      });
    } finally {
      await receiver.close();
    }
  });
});

describe('queue API: status stream', () => {
  it('streams the status at once, at every step, and ends after COMPLETED', async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let calls = 0;
    // The first step waits until the stream is open; the others run freely.
    const executor = createFakeExecutor({ gate: () => (calls++ === 0 ? held : Promise.resolve()) });
    const { url } = await startTestServer({}, { executor });
    const { json } = await post(url, { prompt: 'streamed', size: '64x64', num_inference_steps: 3 });
    const res = await fetch(`${json.status_url}/stream`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const statuses: { status: string; step?: number }[] = [];
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      for (let i = buffer.indexOf('\n\n'); i >= 0; i = buffer.indexOf('\n\n')) {
        statuses.push(JSON.parse(buffer.slice(0, i).replace(/^data: /, '')));
        buffer = buffer.slice(i + 2);
      }
      // Idempotent; the first chunk may carry several events.
      if (statuses.length > 0) release();
    }
    // Opened while queued or just started (the snapshot), then every change once, in order.
    const seq = statuses.map((x) => `${x.status}${x.step ?? ''}`);
    expect(seq[0] === 'IN_QUEUE' ? seq.slice(1) : seq).toEqual([
      'IN_PROGRESS0',
      'IN_PROGRESS1',
      'IN_PROGRESS2',
      'IN_PROGRESS3',
      'COMPLETED',
    ]);
    expect(statuses.at(-1)).toMatchObject({
      request_id: json.request_id,
      metrics: { inference_time: expect.any(Number) },
    });
    const missing = await fetch(`${url}/v1/queue/requests/nope/status/stream`);
    expect(missing.status).toBe(404);
  });
});

describe('queue API: auth', () => {
  it('needs the bearer token like the other /v1 routes', async () => {
    const { url } = await startTestServer({ authToken: 'queue-token' }, { executor: createFakeExecutor() });
    const denied = await post(url, { prompt: 'x', size: '64x64', num_inference_steps: 1 });
    expect(denied.status).toBe(401);
    expect((await getJson(`${url}/v1/queue/requests/x/status`)).status).toBe(401);
    const res = await fetch(`${url}/v1/queue/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer queue-token' },
      body: JSON.stringify({ prompt: 'x', size: '64x64', num_inference_steps: 1 }),
    });
    expect(res.status).toBe(202);
  });
});

describe('queue API: webhook URL guard', () => {
  it('refuses loopback and private webhook URLs unless allowed, and webhooks without a secret', async () => {
    const executor = createFakeExecutor();
    const { url } = await startTestServer({ webhookSecret: SECRET }, { executor });
    for (const hook of ['http://127.0.0.1:9/x', 'http://10.1.2.3/x', 'http://[::1]:9/x', 'http://localhost:9/x']) {
      const { status, json } = await post(url, {
        prompt: 'x',
        size: '64x64',
        num_inference_steps: 1,
        webhook_url: hook,
      });
      expect(status, hook).toBe(400);
      expect(json.error, hook).toMatchObject({ param: 'webhook_url', code: 'forbidden_url' });
    }
    const ftp = await post(url, { prompt: 'x', webhook_url: 'ftp://example.com/x' });
    expect(ftp.json.error).toMatchObject({ param: 'webhook_url', code: 'unsupported_url' });

    const unsigned = await startTestServer({ webhookAllowPrivateUrls: true }, { executor: createFakeExecutor() });
    const off = await post(unsigned.url, { prompt: 'x', webhook_url: 'http://127.0.0.1:9/x' });
    expect(off.status).toBe(400);
    expect(off.json.error).toMatchObject({ param: 'webhook_url', code: 'webhooks_disabled' });
  });
});
