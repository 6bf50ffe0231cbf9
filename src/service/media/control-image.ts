/**
 * @file Control images as the API receives them → {@link RgbImage} for `SampleRequest.controlImage`.
 *
 * Accepted: raw file bytes (a multipart upload), base64 text, a `data:image/...;base64,...` URL, or an http(s) URL,
 * which is fetched with a byte limit and a timeout (no other scheme: no `file:`, `ftp:`...). URLs come from users, so
 * by default (SSRF guard) a host that is, or resolves to, a loopback, private, link-local, CGNAT, unique-local or
 * otherwise non-public address is refused (`forbidden_url`); every address a name resolves to is checked, and the
 * connection goes to one of those checked addresses (no second lookup, so no DNS-rebinding window). Redirects are
 * followed by hand, each hop checked the same way. Decoding is sharp's:
 * any format it reads (PNG, JPEG, WebP, GIF, TIFF, AVIF...), oriented by its EXIF tag and converted to 8-bit sRGB
 * without alpha, as diffusers' `load_image` does (`exif_transpose`, then `convert("RGB")`). Resizing to the output
 * size happens later, in the pipeline (`src/pipeline/flux/control.ts`): this service-side module hands it decoded
 * pixels, so the pipeline layer does no network or file I/O for control images.
 *
 * Every failure is a {@link ControlImageError} with a `code` and `param` (the request field, `controlImage` unless
 * the caller names another).
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import sharp from 'sharp';
import { ForbiddenAddressError, guardedLookup, isPublicAddress } from '../../shared/address-guard.ts';
import { ControlImageError, type RgbImage } from '../pipeline.ts';

export { isPublicAddress } from '../../shared/address-guard.ts';
export { ControlImageError, type ControlImageErrorCode } from '../pipeline.ts';

/** Limits of {@link loadControlImage}. */
export interface ControlImageOptions {
  /** Largest encoded image, in bytes (upload, base64 payload or download). @default 20 MiB */
  maxBytes?: number;
  /** Largest decoded image, in pixels (width·height). @default 50 Mpx */
  maxPixels?: number;
  /** Whole-fetch timeout for URLs (connect, headers and body). @default 10 000 ms */
  timeoutMs?: number;
  /** The request field named in errors. @default 'controlImage' */
  param?: string;
  /**
   * Also fetch URLs whose host is or resolves to a non-public address ({@link isPublicAddress}); for tests and
   * trusted networks only. @default false
   */
  allowPrivateAddresses?: boolean;
  /** Aborts a download (the client that asked has gone); the error is then the signal's reason. */
  signal?: AbortSignal;
}

const DEFAULTS = { maxBytes: 20 * 1024 * 1024, maxPixels: 50_000_000, timeoutMs: 10_000 } as const;
/** Redirect hops followed at most (fetch's own limit is 20; images need few). */
const MAX_REDIRECTS = 5;

/**
 * The control image from an API value: bytes, base64, a data URL or an http(s) URL (see the file header).
 * @throws ControlImageError
 */
export async function loadControlImage(
  input: string | Uint8Array,
  options: ControlImageOptions = {},
): Promise<RgbImage> {
  return (await loadControlImageSource(input, options)).image;
}

/**
 * Like {@link loadControlImage}, also returning the image file's bytes (as uploaded, decoded from base64 or
 * downloaded): another process gets the same pixels from them with {@link decodeImageBytes}.
 * @throws ControlImageError
 */
export async function loadControlImageSource(
  input: string | Uint8Array,
  options: ControlImageOptions = {},
): Promise<{ image: RgbImage; bytes: Uint8Array }> {
  const bytes = await imageBytesOf(input, options);
  return { image: await decodeImageBytes(bytes, options), bytes };
}

/** The encoded image an API value carries or points to. @throws ControlImageError */
async function imageBytesOf(input: string | Uint8Array, options: ControlImageOptions): Promise<Uint8Array> {
  const param = options.param ?? 'controlImage';
  if (input instanceof Uint8Array) return input;
  if (typeof input !== 'string') {
    throw new ControlImageError('invalid_input', 'must be an image upload, a URL or base64 text', param);
  }
  const text = input.trim();
  if (/^https?:\/\//i.test(text)) return fetchImageBytes(text, options);
  if (/^data:/i.test(text)) return decodeDataUrl(text, options);
  // Base64 has no ':', so anything with a scheme left is a URL we do not fetch.
  if (/^[a-z][a-z0-9+.-]*:/i.test(text)) {
    throw new ControlImageError('unsupported_url', `only http and https URLs are fetched, got ${scheme(text)}`, param);
  }
  return decodeBase64(text, options);
}

/**
 * Decodes image file bytes to 8-bit RGB `[H, W, 3]`, EXIF-oriented, alpha dropped.
 * @throws ControlImageError (`too_large`, `invalid_image`)
 */
export async function decodeImageBytes(bytes: Uint8Array, options: ControlImageOptions = {}): Promise<RgbImage> {
  const param = options.param ?? 'controlImage';
  const maxBytes = options.maxBytes ?? DEFAULTS.maxBytes;
  if (bytes.length === 0) throw new ControlImageError('invalid_image', 'the image is empty', param);
  if (bytes.length > maxBytes) {
    throw new ControlImageError('too_large', `the image has ${bytes.length} bytes, more than ${maxBytes}`, param);
  }
  const maxPixels = options.maxPixels ?? DEFAULTS.maxPixels;
  try {
    const { data, info } = await sharp(bytes, { limitInputPixels: maxPixels, failOn: 'error' })
      .rotate() // EXIF orientation, as PIL's exif_transpose
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    // A copy into an ArrayBuffer of its own: sharp's buffer is external memory pinned by sharp; the job keeps only
    // plain pixels until the engine process receives them.
    return { width: info.width, height: info.height, data: new Uint8Array(data) };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (/pixel limit/i.test(message)) {
      throw new ControlImageError('too_large', `the image has more than ${maxPixels} pixels`, param);
    }
    throw new ControlImageError('invalid_image', `not a decodable image: ${message}`, param);
  }
}

/**
 * Downloads an http(s) URL (redirects followed, but only to http(s), at most 5) with a byte limit and a timeout.
 * Unless `allowPrivateAddresses`, hosts that are or resolve to non-public addresses are refused (file header).
 * @throws ControlImageError (`invalid_input`, `unsupported_url`, `forbidden_url`, `fetch_failed`, `too_large`,
 *   `timeout`)
 */
export async function fetchImageBytes(url: string, options: ControlImageOptions = {}): Promise<Uint8Array> {
  const param = options.param ?? 'controlImage';
  const maxBytes = options.maxBytes ?? DEFAULTS.maxBytes;
  const timeoutMs = options.timeoutMs ?? DEFAULTS.timeoutMs;
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    throw new ControlImageError('invalid_input', `not a valid URL: ${JSON.stringify(url.slice(0, 200))}`, param);
  }
  // One signal for the whole exchange, every hop included: it also aborts a body that trickles in.
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = options.signal ? AbortSignal.any([timeout, options.signal]) : timeout;
  for (let hop = 0; ; hop++) {
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      const message = `only http and https URLs are fetched, got ${target.protocol}`;
      if (hop === 0) throw new ControlImageError('unsupported_url', message, param);
      throw new ControlImageError('fetch_failed', `redirected to a non-http URL: ${message}`, param);
    }
    const where = `${target.origin}${target.pathname}`;
    try {
      const res = await get(target, signal, options.allowPrivateAddresses === true);
      const location = res.headers.location;
      if (res.statusCode !== undefined && res.statusCode >= 300 && res.statusCode < 400 && location) {
        res.resume();
        if (hop >= MAX_REDIRECTS) throw new ControlImageError('fetch_failed', `${where}: too many redirects`, param);
        target = new URL(location, target);
        continue;
      }
      if (res.statusCode === undefined || res.statusCode < 200 || res.statusCode >= 300) {
        res.resume();
        throw new ControlImageError('fetch_failed', `${where} answered HTTP ${res.statusCode}`, param);
      }
      const declared = Number(res.headers['content-length'] ?? Number.NaN);
      if (declared > maxBytes) {
        res.destroy();
        throw new ControlImageError('too_large', `${where} has ${declared} bytes, more than ${maxBytes}`, param);
      }
      return await readLimited(res, maxBytes, where, param);
    } catch (err) {
      if (err instanceof ControlImageError) throw err;
      if (err instanceof ForbiddenAddressError) {
        throw new ControlImageError(
          'forbidden_url',
          `${where}: the host ${err.how} a loopback, private or other non-public address, which this server does not fetch`,
          param,
        );
      }
      options.signal?.throwIfAborted();
      if (signal.aborted) throw new ControlImageError('timeout', `${where} took longer than ${timeoutMs} ms`, param);
      const cause = err instanceof Error ? err.message : String(err);
      throw new ControlImageError('fetch_failed', `${where} could not be fetched: ${cause}`, param);
    }
  }
}

/** One GET through node:http(s), connecting only to addresses the guard accepted. Resolves with the response head. */
function get(target: URL, signal: AbortSignal, allowPrivate: boolean): Promise<IncomingMessage> {
  const host = target.hostname.replace(/^\[(.*)\]$/, '$1'); // IPv6 literals come bracketed
  // Literal addresses are connected to without a lookup, so they are checked here; names in `lookup`.
  if (!allowPrivate && isIP(host) !== 0 && !isPublicAddress(host)) {
    return Promise.reject(new ForbiddenAddressError('is'));
  }
  const request = target.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(target, {
      method: 'GET',
      signal,
      headers: { accept: 'image/*', 'user-agent': 'fluxql' },
      lookup: allowPrivate ? undefined : guardedLookup,
      agent: false, // no pooled socket: each request is checked and connected on its own
    });
    req.once('response', resolve);
    req.once('error', reject);
    req.end();
  });
}

/** Reads a response body, stopping as soon as it exceeds `maxBytes` (the length header may be absent or lie). */
async function readLimited(res: IncomingMessage, maxBytes: number, where: string, param: string): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res) {
    total += (chunk as Buffer).length;
    if (total > maxBytes) {
      res.destroy();
      throw new ControlImageError('too_large', `${where} sent more than ${maxBytes} bytes`, param);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** The payload of a base64 `data:` URL. @throws ControlImageError (`invalid_input`, `too_large`) */
function decodeDataUrl(text: string, options: ControlImageOptions): Uint8Array {
  const param = options.param ?? 'controlImage';
  const m = /^data:([^,]*?),(.*)$/is.exec(text);
  if (!m || !/;base64$/i.test(m[1]!)) {
    throw new ControlImageError(
      'invalid_input',
      'a data URL must be base64-encoded (data:image/png;base64,...)',
      param,
    );
  }
  const type = m[1]!.replace(/;base64$/i, '').trim();
  if (type !== '' && !/^image\//i.test(type)) {
    throw new ControlImageError('invalid_input', `a data URL must hold an image, got ${type}`, param);
  }
  return decodeBase64(m[2]!, options);
}

/** Strict base64 (standard or URL-safe alphabet, optional padding, whitespace ignored). @throws ControlImageError */
function decodeBase64(text: string, options: ControlImageOptions): Uint8Array {
  const param = options.param ?? 'controlImage';
  const maxBytes = options.maxBytes ?? DEFAULTS.maxBytes;
  const compact = text.replace(/\s+/g, '');
  // Refuse before decoding: 4 characters carry 3 bytes.
  if (Math.floor((compact.length * 3) / 4) > maxBytes + 2) {
    throw new ControlImageError('too_large', `the base64 image is larger than ${maxBytes} bytes`, param);
  }
  if (compact.length === 0 || !/^[A-Za-z0-9+/_-]+={0,2}$/.test(compact) || compact.length % 4 === 1) {
    throw new ControlImageError('invalid_input', 'expected an http(s) URL, a data URL or base64 image bytes', param);
  }
  return Buffer.from(compact, compact.includes('-') || compact.includes('_') ? 'base64url' : 'base64');
}

function scheme(text: string): string {
  return `${text.slice(0, text.indexOf(':') + 1)}`;
}
