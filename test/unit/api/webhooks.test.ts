/**
 * The webhook sender against real local HTTP receivers: signature over the raw body, bounded attempts with
 * exponential backoff on 5xx, no retry on other 4xx, and the address guard at connection time (a URL that reached
 * delivery still cannot reach a loopback address unless allowed).
 */
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { signWebhook, WebhookDispatcher } from '../../../src/api/rest/webhooks.ts';
import { createLogger } from '../../../src/log.ts';

const SECRET = 'unit-test-secret-0123456789';
const closers: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of closers) await c();
});

/** A receiver answering `status` to every POST, recording arrival times. */
async function receiver(status: number) {
  const hits: { at: number; attempt: string | undefined; raw: string; signature: string | undefined }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hits.push({
        at: performance.now(),
        attempt: req.headers['x-fluxql-attempt'] as string | undefined,
        raw: Buffer.concat(chunks).toString('utf8'),
        signature: req.headers['x-fluxql-signature'] as string | undefined,
      });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise<void>((r) => server.close(() => r())));
  return { url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`), hits };
}

/** A dispatcher whose log lines are collected. */
function dispatcher(settings: ConstructorParameters<typeof WebhookDispatcher>[0]) {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
      cb();
    },
  });
  const d = new WebhookDispatcher(settings, createLogger({ level: 'info', destination }));
  closers.push(() => d.close());
  return { d, lines };
}

const body = async () => ({ request_id: 'job-1', status: 'OK' as const, payload: { data: [] }, error: null });

describe('WebhookDispatcher', () => {
  it('signs the raw body and gives up after maxAttempts on 5xx, waiting longer each time', async () => {
    const r = await receiver(503);
    const { d, lines } = dispatcher({ secret: SECRET, allowPrivateUrls: true, maxAttempts: 3, retryBaseMs: 100 });
    d.deliver(r.url, 'job-1', body);
    await expect
      .poll(() => lines.some((l) => l.msg === 'webhook not delivered; giving up'), { timeout: 10_000 })
      .toBe(true);
    expect(r.hits.map((h) => h.attempt)).toEqual(['1', '2', '3']);
    for (const h of r.hits) {
      expect(h.signature).toBe(`sha256=${createHmac('sha256', SECRET).update(h.raw).digest('hex')}`);
      expect(h.signature).toBe(signWebhook(SECRET, h.raw));
    }
    // Backoff: at least the base delay before the 2nd attempt, at least twice it before the 3rd.
    const [a, b, c] = r.hits.map((h) => h.at) as [number, number, number];
    expect(b - a).toBeGreaterThanOrEqual(95);
    expect(c - b).toBeGreaterThanOrEqual(195);
  });

  it('does not retry a 4xx other than 408/429', async () => {
    const r = await receiver(410);
    const { d, lines } = dispatcher({ secret: SECRET, allowPrivateUrls: true, maxAttempts: 5, retryBaseMs: 10 });
    d.deliver(r.url, 'job-1', body);
    await expect
      .poll(() => lines.some((l) => l.msg === 'webhook not delivered; giving up'), { timeout: 10_000 })
      .toBe(true);
    expect(r.hits).toHaveLength(1);
  });

  it('refuses to connect to a loopback address at delivery time unless allowed', async () => {
    const r = await receiver(200);
    const { d, lines } = dispatcher({ secret: SECRET, maxAttempts: 3, retryBaseMs: 10 });
    d.deliver(r.url, 'job-1', body);
    await expect
      .poll(() => lines.find((l) => l.msg === 'webhook not delivered; giving up'), { timeout: 10_000 })
      .toMatchObject({
        error: 'forbidden address',
        attempt: 1,
      });
    expect(r.hits).toHaveLength(0);
    // A name resolving to loopback is refused by the guarded lookup too.
    const byName = new URL(r.url.href.replace('127.0.0.1', 'localhost'));
    d.deliver(byName, 'job-2', body);
    await expect
      .poll(() => lines.filter((l) => l.msg === 'webhook not delivered; giving up').length, { timeout: 10_000 })
      .toBe(2);
    expect(r.hits).toHaveLength(0);
  });
});
