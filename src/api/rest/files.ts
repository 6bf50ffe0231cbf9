/**
 * @file `GET|HEAD /images/<name>`: stored images and previews. Names are never reused, so responses are
 * cacheable forever (`immutable`) and the ETag is the name itself.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { GenerationService } from '../../service/index.ts';
import { HttpError } from './http.ts';

/** URL prefix of stored images. */
export const IMAGES_PREFIX = '/images/';

/** Serves one stored file; unknown or cleaned-up names give 404. */
export async function handleImageFile(
  req: IncomingMessage,
  res: ServerResponse,
  service: GenerationService,
  pathname: string,
): Promise<void> {
  const name = decodeURIComponent(pathname.slice(IMAGES_PREFIX.length));
  const file = service.images.resolve(name);
  const info = file ? await stat(file.path).catch(() => undefined) : undefined;
  if (!file || !info?.isFile()) {
    throw new HttpError(
      404,
      `No image ${JSON.stringify(name)} (unknown, or removed by cleanup)`,
      'invalid_request_error',
      'not_found',
    );
  }
  const etag = `"${name}"`;
  const headers = {
    'content-type': file.contentType,
    'cache-control': 'public, max-age=31536000, immutable',
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
