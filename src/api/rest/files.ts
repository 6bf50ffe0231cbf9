/**
 * @file `GET|HEAD /images/<name>`: stored images and previews. Names are never reused, so responses are
 * cacheable forever (`immutable`) and the ETag is the name itself. With API keys an image is the job owner's: it
 * is served for a valid `?sig=` (URLs the API hands out carry one), the owner's key or an admin key; anyone else
 * gets the 404 of an unknown name. Signed or owner-only replies are `private` for caches.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Caller, canAccess, type GenerationService } from '../../service/index.ts';
import type { Authenticator } from '../auth.ts';
import { HttpError } from './http.ts';

/** URL prefix of stored images. */
export const IMAGES_PREFIX = '/images/';

/** Length of a job id (a UUID), the prefix of every image name (`<jobId>-<index>.<ext>`, `<jobId>-p<step>.webp`). */
const JOB_ID_CHARS = 36;

/** Who may read an image: keys and the caller (undefined without keys). */
export interface ImageAccess {
  auth: Authenticator;
  caller?: Caller;
}

/** Whether the request may read image `name` (see the file comment). */
async function mayRead(name: string, url: URL, service: GenerationService, access: ImageAccess): Promise<boolean> {
  if (!access.auth.enabled) return true;
  if (access.auth.verifyPath(url.pathname, url.searchParams.get('sig'))) return true;
  const caller = access.caller;
  if (!caller) return false;
  if (caller.admin) return true;
  const job = await service.get(name.slice(0, JOB_ID_CHARS)).catch(() => undefined);
  return job !== undefined && canAccess(job, caller);
}

/** Serves one stored file; unknown or cleaned-up names give 404, a malformed escape 400. */
export async function handleImageFile(
  req: IncomingMessage,
  res: ServerResponse,
  service: GenerationService,
  url: URL,
  access: ImageAccess,
): Promise<void> {
  let name: string;
  try {
    name = decodeURIComponent(url.pathname.slice(IMAGES_PREFIX.length));
  } catch {
    throw new HttpError(400, 'Malformed percent-encoding in the image name', 'invalid_request_error', 'invalid_path');
  }
  const notFound = () =>
    new HttpError(
      404,
      `No image ${JSON.stringify(name)} (unknown, or removed by cleanup)`,
      'invalid_request_error',
      'not_found',
    );
  if (!(await mayRead(name, url, service, access))) throw notFound();
  const file = service.images.resolve(name);
  const info = file ? await stat(file.path).catch(() => undefined) : undefined;
  if (!file || !info?.isFile()) throw notFound();
  const etag = `"${name}"`;
  const headers = {
    'content-type': file.contentType,
    'cache-control': `${access.auth.enabled ? 'private' : 'public'}, max-age=31536000, immutable`,
    etag,
    'last-modified': info.mtime.toUTCString(),
    'x-content-type-options': 'nosniff',
  };
  if (req.headers['if-none-match'] === etag) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  res.writeHead(200, { ...headers, 'content-length': info.size });
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  await new Promise<void>((resolve, reject) => {
    const stream = createReadStream(file.path);
    stream.on('error', reject);
    res.on('close', () => {
      stream.destroy();
      resolve();
    });
    stream.pipe(res);
  });
}
