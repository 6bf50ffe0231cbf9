/**
 * @file Webhooks of the queue API: when a queued request ends, its `webhook_url` is POSTed the result.
 *
 * - Body (JSON, fal's webhook shape): `{request_id, status: "OK" | "ERROR", payload, error, timestamp}`; `payload`
 *   is what the response URL answers (OpenAI's shape), `error` is `{code, message}` for a failed or cancelled job.
 * - Signed: `X-Fluxql-Signature: sha256=<hex HMAC-SHA256 of the raw body with WEBHOOK_SECRET>` and
 *   `X-Fluxql-Timestamp: <unix seconds>`, the same value as the body's `timestamp` (so the signature covers it and
 *   receivers can refuse replays older than a few minutes).
 * - Retried with exponential backoff (base · 2^(n-1)) after a connection error, a timeout, or a 408, 429 or 5xx
 *   answer, at most `maxAttempts` times; another 4xx or a redirect is final (a receiver that refuses will refuse
 *   again). A 2xx ends it.
 * - SSRF guard (`shared/address-guard.ts`, as control image URLs): hosts that are or resolve to loopback, private
 *   or other non-public addresses are refused at submission and again at every connection (no second lookup), unless
 *   WEBHOOK_ALLOW_PRIVATE_URLS.
 */
import { createHmac } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { ForbiddenAddressError, guardedLookup, isPublicAddress } from '../../shared/address-guard.ts';
import { HttpError } from './http.ts';

/** Header carrying `sha256=<hex>`. */
export const SIGNATURE_HEADER = 'x-fluxql-signature';
/** Header carrying the unix time (seconds) the attempt was sent, also in the body's `timestamp`. */
export const TIMESTAMP_HEADER = 'x-fluxql-timestamp';

/** Webhook settings (config: WEBHOOK_*). */
export interface WebhookSettings {
  /** HMAC key; without it `webhook_url` is refused (an unsigned webhook could be forged by anyone). */
  secret?: string;
  /** Deliver to loopback/private/link-local/... hosts too (tests, trusted networks). @default false */
  allowPrivateUrls?: boolean;
  /** Attempts in all, the first included. @default 5 */
  maxAttempts?: number;
  /** Delay before the second attempt; doubles each time. @default 1000 ms */
  retryBaseMs?: number;
  /** Per-attempt limit (connect, send, answer). @default 10 000 ms */
  timeoutMs?: number;
}

/** What a webhook POSTs. */
export interface WebhookBody {
  request_id: string;
  status: 'OK' | 'ERROR';
  payload: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  timestamp: number;
}

/** `sha256=<hex HMAC-SHA256 of body>`, the signature header's value. */
export function signWebhook(secret: string, rawBody: string | Buffer): string {
  return `sha256=${createHmac('sha256', secret).update(rawBody).digest('hex')}`;
}

/** Sends webhooks with retries; `close` aborts the ones under way (server stop). */
export class WebhookDispatcher {
  readonly #s: Required<Omit<WebhookSettings, 'secret'>> & { secret?: string };
  readonly #log: Logger;
  readonly #stop = new AbortController();
  readonly #pending = new Set<Promise<void>>();

  constructor(settings: WebhookSettings, log: Logger) {
    this.#s = {
      allowPrivateUrls: settings.allowPrivateUrls ?? false,
      maxAttempts: settings.maxAttempts ?? 5,
      retryBaseMs: settings.retryBaseMs ?? 1000,
      timeoutMs: settings.timeoutMs ?? 10_000,
      ...(settings.secret ? { secret: settings.secret } : {}),
    };
    this.#log = log.child({ component: 'webhooks' });
  }

  /**
   * Checks a client's `webhook_url` at submission: an http(s) URL whose host is public (a name is resolved now and
   * again at delivery). @throws HttpError 400 with `param: "webhook_url"`
   */
  async validate(value: unknown): Promise<URL> {
    const bad = (code: string, message: string) =>
      new HttpError(400, `webhook_url: ${message}`, 'invalid_request_error', code, 'webhook_url');
    if (!this.#s.secret) {
      throw bad('webhooks_disabled', 'this server has no WEBHOOK_SECRET, so it sends no (unsigned) webhooks');
    }
    if (typeof value !== 'string' || value.length > 2048) throw bad('invalid_url', 'must be a URL string');
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw bad('invalid_url', 'not a valid URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw bad('unsupported_url', `only http and https URLs are called, got ${url.protocol}`);
    }
    if (!this.#s.allowPrivateUrls) {
      const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
      const addresses = isIP(host) !== 0 ? [host] : await resolveAll(host);
      if (addresses === undefined) throw bad('invalid_url', `the host ${host} does not resolve`);
      if (addresses.length === 0 || addresses.some((a) => !isPublicAddress(a))) {
        throw bad(
          'forbidden_url',
          `the host ${host} is or resolves to a loopback, private or other non-public address, which this server does not call`,
        );
      }
    }
    return url;
  }

  /** Sends `body()` (built once the job has ended) to `url`, retrying; never throws. */
  deliver(url: URL, requestId: string, body: () => Promise<Omit<WebhookBody, 'timestamp'>>): void {
    const run = this.#deliver(url, requestId, body).catch((err: unknown) =>
      this.#log.error({ err, jobId: requestId }, 'webhook delivery crashed'),
    );
    this.#pending.add(run);
    void run.finally(() => this.#pending.delete(run));
  }

  /** Aborts deliveries under way and waits for them to stop. */
  async close(): Promise<void> {
    this.#stop.abort();
    await Promise.all([...this.#pending]);
  }

  async #deliver(url: URL, jobId: string, build: () => Promise<Omit<WebhookBody, 'timestamp'>>): Promise<void> {
    // Waiting for the job's end must not hold up `close`: a scale-out API node stops its Redis clients first, after
    // which the job's end would never be seen.
    const content = await untilAborted(build(), this.#stop.signal);
    if (content === undefined) return;
    const where = `${url.origin}${url.pathname}`;
    for (let attempt = 1; attempt <= this.#s.maxAttempts; attempt++) {
      if (attempt > 1) {
        const delay = this.#s.retryBaseMs * 2 ** (attempt - 2);
        if (!(await sleep(delay, this.#stop.signal))) return;
      }
      const timestamp = Math.floor(Date.now() / 1000);
      const raw = JSON.stringify({ ...content, timestamp } satisfies WebhookBody);
      const outcome = await this.#post(url, raw, timestamp, attempt);
      const log = { jobId, url: where, attempt, ...outcome };
      if (outcome.status !== undefined && outcome.status >= 200 && outcome.status < 300) {
        this.#log.info(log, 'webhook delivered');
        return;
      }
      const retryable =
        outcome.status === undefined
          ? !outcome.final
          : outcome.status === 408 || outcome.status === 429 || outcome.status >= 500;
      if (!retryable || attempt === this.#s.maxAttempts || this.#stop.signal.aborted) {
        this.#log.warn(log, 'webhook not delivered; giving up');
        return;
      }
      this.#log.warn(log, 'webhook attempt failed; retrying');
    }
  }

  /** One POST; resolves with the HTTP status, or the error (final when retrying cannot help). */
  #post(
    url: URL,
    raw: string,
    timestamp: number,
    attempt: number,
  ): Promise<{ status?: number; error?: string; final?: boolean }> {
    if (!this.#s.allowPrivateUrls) {
      const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
      if (isIP(host) !== 0 && !isPublicAddress(host))
        return Promise.resolve({ error: 'forbidden address', final: true });
    }
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const signal = AbortSignal.any([this.#stop.signal, AbortSignal.timeout(this.#s.timeoutMs)]);
    return new Promise((resolve) => {
      const req = request(url, {
        method: 'POST',
        signal,
        agent: false, // every attempt connects through the guard on its own
        lookup: this.#s.allowPrivateUrls ? undefined : guardedLookup,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(raw),
          'user-agent': 'fluxql-webhook',
          [SIGNATURE_HEADER]: signWebhook(this.#s.secret ?? '', raw),
          [TIMESTAMP_HEADER]: String(timestamp),
          'x-fluxql-attempt': String(attempt),
        },
      });
      req.once('response', (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0 });
      });
      req.once('error', (err) =>
        resolve({
          error: err instanceof ForbiddenAddressError ? 'forbidden address' : err.message,
          final: err instanceof ForbiddenAddressError,
        }),
      );
      req.end(raw);
    });
  }
}

/** Every address of a name; undefined when it does not resolve. */
async function resolveAll(host: string): Promise<string[] | undefined> {
  try {
    return (await lookup(host, { all: true })).map((a) => a.address);
  } catch {
    return undefined;
  }
}

/** `promise`'s value, or undefined as soon as `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Resolves true after `ms`, or false at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
