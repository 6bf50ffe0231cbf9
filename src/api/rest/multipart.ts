/**
 * @file The body of `POST /v1/images/edits` in OpenAI's shape: `multipart/form-data` (parsed with busboy) whose files
 * (`image`, `image[]`, `mask`) become data URLs and whose text fields stay strings, numbers where the route expects
 * them; or a JSON object (TheStage's body with `image` / `mask` as base64, data or http(s) URLs).
 */
import type { IncomingMessage } from 'node:http';
import busboy from 'busboy';
import { HttpError, readJsonObject } from './http.ts';

/** Text fields that carry numbers (multipart has only strings). */
const NUMERIC = new Set([
  'n',
  'seed',
  'strength',
  'true_cfg_scale',
  'guidance_scale',
  'num_inference_steps',
  'output_compression',
  'output_quality',
  'width',
  'height',
]);

/** Reads an edit request body as a plain object (see the file header); files over `maxFileBytes` are a 413. */
export async function readEditBody(
  req: IncomingMessage,
  maxFileBytes: number,
  maxBodyBytes: number,
): Promise<{ body: Record<string, unknown>; multipart: boolean }> {
  const type = req.headers['content-type'] ?? '';
  if (!/^multipart\/form-data/i.test(type)) return { body: await readJsonObject(req, maxBodyBytes), multipart: false };
  return { body: await readMultipart(req, maxFileBytes), multipart: true };
}

function readMultipart(req: IncomingMessage, maxFileBytes: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let bb: busboy.Busboy;
    try {
      bb = busboy({ headers: req.headers, limits: { fileSize: maxFileBytes, files: 4, fields: 50 } });
    } catch (err) {
      reject(malformed(err));
      return;
    }
    const body: Record<string, unknown> = {};
    const files: Promise<void>[] = [];
    let failed: HttpError | undefined;
    bb.on('field', (name, value) => {
      body[name] = NUMERIC.has(name) && value.trim() !== '' && Number.isFinite(Number(value)) ? Number(value) : value;
    });
    bb.on('file', (name, stream, info) => {
      const chunks: Buffer[] = [];
      const field = name === 'image[]' ? 'image' : name;
      files.push(
        new Promise<void>((done) => {
          stream.on('data', (c: Buffer) => chunks.push(c));
          stream.on('limit', () => {
            failed ??= new HttpError(
              413,
              `${field} is larger than ${maxFileBytes} bytes`,
              'invalid_request_error',
              'too_large',
              field,
            );
          });
          stream.on('close', () => {
            // The first image wins (OpenAI's `image[]` may list several; FLUX edits one).
            if (body[field] === undefined) {
              const mime = /^image\//.test(info.mimeType) ? info.mimeType : 'image/png';
              body[field] = `data:${mime};base64,${Buffer.concat(chunks).toString('base64')}`;
            }
            done();
          });
        }),
      );
    });
    bb.on('error', (err) => reject(malformed(err)));
    bb.on('close', () => {
      Promise.all(files).then(() => (failed ? reject(failed) : resolve(body)), reject);
    });
    req.pipe(bb);
  });
}

/** A body busboy cannot parse (bad boundary, truncated parts): 400 `invalid_multipart`. */
function malformed(err: unknown): HttpError {
  return new HttpError(
    400,
    `Malformed multipart body: ${(err as Error).message}`,
    'invalid_request_error',
    'invalid_multipart',
  );
}
