/**
 * @file CORS for every route, answered before authentication. Origins come from an allow-list (CORS_ORIGINS); with
 * none, any origin may call, as `*`. Credentials are never allowed: clients authenticate with a bearer header,
 * which needs no cookies, so no origin is ever echoed together with `Access-Control-Allow-Credentials`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

const ALLOWED_METHODS = 'GET, HEAD, POST, OPTIONS';
const ALLOWED_HEADERS = 'authorization, content-type, accept, x-model-name';
const EXPOSED_HEADERS = 'x-job-id, x-seed, retry-after';

/** Sets the CORS headers of a reply. Returns whether the origin is allowed (always true without an Origin). */
export function applyCors(req: IncomingMessage, res: ServerResponse, origins: readonly string[] | undefined): boolean {
  const origin = req.headers.origin;
  if (!origin) return true;
  if (!origins) {
    res.setHeader('access-control-allow-origin', '*');
  } else {
    res.setHeader('vary', 'Origin');
    if (!origins.includes(origin)) return false;
    res.setHeader('access-control-allow-origin', origin);
  }
  res.setHeader('access-control-expose-headers', EXPOSED_HEADERS);
  return true;
}

/** Answers a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) with 204, without authentication. */
export function isPreflight(req: IncomingMessage): boolean {
  return req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined;
}

/** The 204 reply to a preflight; an origin outside the allow-list gets no `Access-Control-Allow-*` headers. */
export function answerPreflight(req: IncomingMessage, res: ServerResponse, origins: readonly string[] | undefined) {
  if (applyCors(req, res, origins) && req.headers.origin) {
    res.setHeader('access-control-allow-methods', ALLOWED_METHODS);
    res.setHeader('access-control-allow-headers', ALLOWED_HEADERS);
    res.setHeader('access-control-max-age', '600');
  }
  res.writeHead(204, { 'content-length': 0 });
  res.end();
}
