/**
 * @file Small HTTP helpers for the REST routes: bounded body reading, JSON replies, OpenAI-shaped errors, and
 * the 401 of protected routes (tokens are checked in `../auth.ts`).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** An error to answer with a status and OpenAI's `{ error: { message, type, param, code } }` body. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/**
 * Reads the whole body, refusing more than `limit` bytes (413) rather than buffering without bound.
 * @default limit 1 MiB (a 100 kB prompt must reach validation and get a typed error, not a 413)
 */
export async function readBody(req: IncomingMessage, limit = 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      throw new HttpError(413, `Request body larger than ${limit} bytes`, 'invalid_request_error', 'body_too_large');
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Parses a JSON object body (at most `limit` bytes, see {@link readBody}); malformed JSON or a non-object gives a 400 `invalid_json`. */
export async function readJsonObject(req: IncomingMessage, limit?: number): Promise<Record<string, unknown>> {
  const raw = await readBody(req, limit);
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `Malformed JSON body: ${(err as Error).message}`, 'invalid_request_error', 'invalid_json');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new HttpError(400, 'The body must be a JSON object', 'invalid_request_error', 'invalid_json');
  }
  return value as Record<string, unknown>;
}

/** Sends a JSON reply (no-op when the client has already gone). */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  if (res.writableEnded || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

/** Sends an {@link HttpError} in OpenAI's error shape. */
export function sendError(res: ServerResponse, err: HttpError): void {
  sendJson(
    res,
    err.status,
    { error: { message: err.message, type: err.type, param: err.param, code: err.code } },
    err.headers,
  );
}

/** The 401 every protected route answers. */
export function unauthorized(): HttpError {
  return new HttpError(
    401,
    'Missing or invalid bearer token (Authorization: Bearer <API key or AUTH_TOKEN>)',
    'invalid_request_error',
    'invalid_api_key',
    null,
    { 'www-authenticate': 'Bearer' },
  );
}
