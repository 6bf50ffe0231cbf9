/**
 * @file Who is calling: bearer-token parsing, API keys (API_KEYS / API_KEYS_FILE, and AUTH_TOKEN as an admin key)
 * resolved to a {@link Caller} in constant time, and signed image URLs. The one home of these checks for REST,
 * GraphQL over HTTP/SSE and WebSocket, `/metrics` and `/images`.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Caller } from '../service/index.ts';

/** One accepted key. */
export interface KeyEntry {
  key: string;
  name: string;
  admin: boolean;
}

/** The outcome of a token check: `caller` is undefined when the server has no keys (everyone sees everything). */
export type AuthResult = { ok: true; caller?: Caller } | { ok: false };

const sha256 = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

/**
 * Compares two secrets in constant time: both are hashed first, so neither their contents nor their lengths leak
 * through timing.
 */
export function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(sha256(a), sha256(b));
}

/** The token of an `Authorization: Bearer <token>` value (undefined for anything else). */
export function bearerToken(header: unknown): string | undefined {
  if (typeof header !== 'string') return undefined;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  return m?.[1]?.trim() || undefined;
}

/** The bearer token of a request's `Authorization` header. */
export function requestToken(req: IncomingMessage): string | undefined {
  return bearerToken(req.headers.authorization);
}

/** Resolves tokens to callers. With no keys at all, every request is allowed and sees every job (as before keys). */
export class Authenticator {
  readonly #keys: { digest: Buffer; caller: Caller }[];
  readonly #imageSecret: Buffer;

  /** @param keys API keys; AUTH_TOKEN is passed as one named `admin` with the admin role. */
  constructor(keys: readonly KeyEntry[]) {
    this.#keys = keys.map((k) => ({ digest: sha256(k.key), caller: { name: k.name, admin: k.admin } }));
    // Image URL signatures must verify on every API node of a deployment, so the secret derives from the keys
    // (which every node shares) rather than from per-process randomness.
    const material = keys
      .map((k) => k.key)
      .sort()
      .join('\0');
    this.#imageSecret = createHash('sha256').update(`fluxql-image-url\0${material}`).digest();
  }

  /** Whether requests need a key. */
  get enabled(): boolean {
    return this.#keys.length > 0;
  }

  /** Checks a token against every key (no early exit, constant-time compares of hashes). */
  authenticate(token: string | undefined): AuthResult {
    if (!this.enabled) return { ok: true };
    if (token === undefined) return { ok: false };
    const digest = sha256(token);
    let found: Caller | undefined;
    for (const k of this.#keys) {
      if (timingSafeEqual(digest, k.digest) && !found) found = k.caller;
    }
    return found ? { ok: true, caller: { ...found } } : { ok: false };
  }

  /** {@link authenticate} on a request's `Authorization` header. */
  authenticateRequest(req: IncomingMessage): AuthResult {
    return this.authenticate(requestToken(req));
  }

  /**
   * A stored image's URL path with a signature (`?sig=`) when keys are on: the URL works in an `<img>` without a
   * header, for whoever the API handed it to (the job's owner). Without keys, the plain path.
   */
  signPath(path: string): string {
    if (!this.enabled) return path;
    return `${path}?sig=${this.#signature(path)}`;
  }

  /** Whether `sig` is the signature of `path` (see {@link signPath}). */
  verifyPath(path: string, sig: string | null): boolean {
    if (!sig) return false;
    const expected = Buffer.from(this.#signature(path));
    const given = Buffer.from(sig);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  #signature(path: string): string {
    return createHmac('sha256', this.#imageSecret).update(path).digest('base64url').slice(0, 32);
  }
}

/** Callers resolved for a request before the GraphQL layer runs (HTTP and WebSocket upgrade requests). */
const callers = new WeakMap<IncomingMessage, Caller>();

/** Remembers the caller of a request (the GraphQL context reads it). */
export function setCaller(req: IncomingMessage, caller: Caller | undefined): void {
  if (caller) callers.set(req, caller);
}

/** The caller remembered for a request, if any. */
export function callerOf(req: IncomingMessage | undefined): Caller | undefined {
  return req ? callers.get(req) : undefined;
}
