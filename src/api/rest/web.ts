/**
 * @file `GET|HEAD /` and the built web page's files (`web/dist`, made by `npm run build:web`; the server never
 * builds). Vite names everything under `assets/` by content hash, so those are cached for a year (`immutable`);
 * `index.html` must be revalidated (`no-cache`) so a rebuilt page is picked up at once.
 */
import { readFile, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, join, resolve, sep } from 'node:path';
import { PACKAGE_ROOT } from '../../shared/package-root.ts';
import { HttpError } from './http.ts';

/** Where the built page lives. */
export const WEB_DIST_DIR = `${join(PACKAGE_ROOT, 'web', 'dist')}${sep}`;

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

// The page loads only its own files; images may come from PUBLIC_URL's origin; graphql-ws needs ws(s):.
const PAGE_CSP =
  "default-src 'self'; img-src 'self' data: http: https:; connect-src 'self' ws: wss:; " +
  "object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/** The file under `distDir` that `pathname` names, or undefined (malformed, or escaping the folder). */
function fileOf(pathname: string, distDir: string): string | undefined {
  let rel: string;
  try {
    rel = decodeURIComponent(pathname === '/' ? '/index.html' : pathname);
  } catch {
    return undefined;
  }
  if (rel.includes('\0')) return undefined;
  const root = resolve(distDir);
  const file = resolve(root, `.${rel}`);
  return file.startsWith(root + sep) ? file : undefined;
}

/**
 * Serves one file of the built page. Returns false when `pathname` is not one (the router goes on to its 404);
 * throws a 503 at `/` when the page has not been built, naming the command that builds it.
 */
export async function handleWebAsset(
  req: IncomingMessage,
  res: ServerResponse,
  pathname: string,
  distDir: string = WEB_DIST_DIR,
): Promise<boolean> {
  const file = fileOf(pathname, distDir);
  const info = file ? await stat(file).catch(() => undefined) : undefined;
  if (!file || !info?.isFile()) {
    if (pathname !== '/') return false;
    throw new HttpError(503, 'The web page is not built: run `npm run build:web`', 'server_error', 'web_not_built');
  }
  const hashed = pathname.startsWith('/assets/');
  const etag = hashed
    ? `"${pathname.slice('/assets/'.length)}"`
    : `W/"${info.size.toString(16)}-${Math.floor(info.mtimeMs).toString(16)}"`;
  const isHtml = extname(file) === '.html';
  const headers: Record<string, string> = {
    'content-type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream',
    'cache-control': hashed ? 'public, max-age=31536000, immutable' : 'no-cache',
    etag,
    'last-modified': info.mtime.toUTCString(),
    'x-content-type-options': 'nosniff',
    ...(isHtml ? { 'content-security-policy': PAGE_CSP, 'referrer-policy': 'no-referrer' } : {}),
  };
  if (req.headers['if-none-match'] === etag) {
    res.writeHead(304, headers);
    res.end();
    return true;
  }
  // The build is a few small files: read whole, no streaming needed.
  const body = req.method === 'HEAD' ? undefined : await readFile(file);
  res.writeHead(200, { ...headers, 'content-length': String(info.size) });
  res.end(body);
  return true;
}
