/**
 * @file Downloads one file of a hub repo into the cache layout (see cache.ts), resuming and verifying it.
 *
 * Why our own and not `downloadFileToCacheDir` of @huggingface/hub (2.17): that function restarts a cut download
 * from zero (no HTTP Range), verifies no checksum, reports no progress, and files a blob under the snapshot of the
 * file's *last commit* rather than the revision's commit, so huggingface_hub would not find it (and writes no
 * `refs/`). This follows huggingface_hub's protocol instead:
 *
 * 1. `HEAD <endpoint>/<repo>/resolve/<commit>/<path>` without following absolute redirects. The hub answers with
 *    `X-Repo-Commit`, `ETag` (git blob sha1 of a small file) or, for an LFS file, a 302 whose `Location` is the
 *    storage URL plus `X-Linked-Etag` (the sha256 of the content) and `X-Linked-Size`.
 * 2. `GET` the storage URL (or the resolve URL), with `Range: bytes=<n>-` when `blobs/<etag>.incomplete` already
 *    holds n bytes; a cut connection is resumed the same way, a few times, before giving up (the partial file
 *    stays, so the next start resumes too).
 * 3. The content's sha256 (LFS) or git blob sha1 (`sha1("blob <size>\0" + content)`) must equal the etag, else the
 *    partial file is deleted and {@link ChecksumError} is thrown. Then `blobs/<etag>` and the snapshot symlink.
 *
 * The token goes only to the hub's own origin, never to the storage host a redirect points at. Processes sharing a
 * cache (several workers on one volume) take a lock per blob (proper-lockfile: a lock folder kept fresh while held,
 * taken over when its holder died), so each blob is downloaded once and never appended to by two writers.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, statSync } from 'node:fs';
import { mkdir, rename, symlink, truncate, unlink } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream } from 'node:stream/web';
import lockfile from 'proper-lockfile';
import type { HubOptions } from './cache.ts';
import { ChecksumError, HubError } from './errors.ts';

/** What the hub says about one file (from the resolve endpoint's headers). */
export interface RemoteFile {
  /** sha256 (LFS) or git blob sha1, no quotes. */
  etag: string;
  size: number;
  /** Where the bytes are (the resolve URL itself or the LFS storage URL). */
  url: string;
  /** The commit the revision resolved to (X-Repo-Commit). */
  commit?: string;
}

/** Download knobs shared by every file. */
export interface DownloadContext {
  repo: string;
  hub: HubOptions;
  /** Called with each chunk's byte count as it is written. */
  onBytes?: (bytes: number) => void;
  /** Attempts per file when the connection is cut. @default 5 */
  attempts?: number;
  /** Milliseconds before the first retry, doubling. @default 500 */
  retryDelayMs?: number;
}

const SHA256 = /^[0-9a-f]{64}$/;
const SHA1 = /^[0-9a-f]{40}$/;

/** `"abc"` / `W/"abc"` → `abc`. */
function cleanEtag(value: string | null): string | undefined {
  return value?.replace(/^W\//, '').replace(/^"|"$/g, '') || undefined;
}

function encodePath(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}

/** `<endpoint>/<repo>/resolve/<revision>/<path>`. */
export function resolveUrl(hub: HubOptions, repo: string, revision: string, path: string): string {
  return `${hub.endpoint.replace(/\/+$/, '')}/${repo}/resolve/${encodeURIComponent(revision)}/${encodePath(path)}`;
}

/** Headers for `url`: the token only when `url` is on the hub's own origin. */
function headersFor(hub: HubOptions, url: string, extra: Record<string, string> = {}): Record<string, string> {
  const sameOrigin = new URL(url).origin === new URL(hub.endpoint).origin;
  return { ...extra, ...(hub.token && sameOrigin ? { authorization: `Bearer ${hub.token}` } : {}) };
}

/** Turns a hub HTTP failure into a HubError that says what to do. */
export function statusError(repo: string, what: string, status: number): HubError {
  if (status === 401 || status === 403)
    return new HubError(
      repo,
      `${what}: access denied (HTTP ${status}); gated or private models need HF_TOKEN (the hub also answers 401 for repos that do not exist)`,
    );
  if (status === 404) return new HubError(repo, `${what}: not found on the hub (HTTP 404)`);
  return new HubError(repo, `${what}: the hub answered HTTP ${status}`);
}

/**
 * HEADs the resolve URL of `path` at `revision` (relative redirects, e.g. a renamed repo, are followed; absolute
 * ones, to LFS storage, are not) and reads the file's etag, size, location and commit.
 */
export async function headFile(ctx: DownloadContext, revision: string, path: string): Promise<RemoteFile> {
  let url = resolveUrl(ctx.hub, ctx.repo, revision, path);
  for (let hop = 0; hop < 5; hop++) {
    let res: Response;
    try {
      res = await fetch(url, { method: 'HEAD', redirect: 'manual', headers: headersFor(ctx.hub, url) });
    } catch (err) {
      throw new HubError(ctx.repo, `cannot reach ${ctx.hub.endpoint} (${(err as Error).message})`, { cause: err });
    }
    const location = res.headers.get('location');
    const linkedEtag = cleanEtag(res.headers.get('x-linked-etag'));
    const isRedirect = res.status >= 300 && res.status < 400;
    if (isRedirect && location && !linkedEtag && location.startsWith('/')) {
      url = new URL(location, url).toString(); // relative redirect: same file under the repo's new name
      continue;
    }
    if (!res.ok && !isRedirect) throw statusError(ctx.repo, path, res.status);
    const etag = linkedEtag ?? cleanEtag(res.headers.get('etag'));
    const size = Number(res.headers.get('x-linked-size') ?? res.headers.get('content-length'));
    if (!etag || !Number.isSafeInteger(size))
      throw new HubError(ctx.repo, `${path}: the hub's answer has no ETag or size (is HF_ENDPOINT a hub?)`);
    const commit = res.headers.get('x-repo-commit') ?? undefined;
    return {
      etag,
      size,
      url: isRedirect && location ? new URL(location, url).toString() : url,
      ...(commit ? { commit } : {}),
    };
  }
  throw new HubError(ctx.repo, `${path}: too many redirects`);
}

/** The digest the etag names, fed with the git blob header when it is a sha1. */
function hasherFor(etag: string, size: number): Hash | undefined {
  if (SHA256.test(etag)) return createHash('sha256');
  if (SHA1.test(etag)) return createHash('sha1').update(`blob ${size}\0`);
  return undefined; // e.g. a xet hash: only the size is checked
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Makes `blobs/<etag>` hold the file (downloading, resuming or reusing it) and `snapshots/<commit>/<path>` link to
 * it. Returns the snapshot path.
 * @throws ChecksumError when the bytes do not match the etag; HubError when the hub refuses or the download keeps
 * failing (the partial file is kept for the next attempt).
 */
export async function downloadToCache(
  ctx: DownloadContext,
  repoFolder: string,
  commit: string,
  path: string,
  remote: RemoteFile,
): Promise<string> {
  const pointer = join(repoFolder, 'snapshots', commit, path);
  const blob = join(repoFolder, 'blobs', remote.etag);
  await mkdir(dirname(blob), { recursive: true });
  const complete = () => existsSync(blob) && statSync(blob).size === remote.size;
  if (!complete()) {
    const release = await lockfile.lock(blob, {
      realpath: false, // the blob does not exist yet
      stale: 30_000,
      update: 5_000,
      retries: { forever: true, minTimeout: 100, maxTimeout: 2_000 },
    });
    try {
      if (!complete()) await fetchBlob(ctx, path, remote, blob); // another process may have finished it meanwhile
    } finally {
      await release();
    }
  }
  await mkdir(dirname(pointer), { recursive: true });
  // Link under a private name, then rename over the pointer: atomic, and safe when two processes link it at once.
  const temp = `${pointer}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  await symlink(relative(dirname(pointer), blob), temp);
  await rename(temp, pointer);
  return pointer;
}

async function fetchBlob(ctx: DownloadContext, path: string, remote: RemoteFile, blob: string): Promise<void> {
  const incomplete = `${blob}.incomplete`;
  const attempts = ctx.attempts ?? 5;
  let delay = ctx.retryDelayMs ?? 500;
  for (let attempt = 1; ; attempt++) {
    try {
      await fetchRange(ctx, path, remote, incomplete);
      break;
    } catch (err) {
      if (err instanceof HubError || attempt >= attempts) {
        if (err instanceof HubError) throw err;
        throw new HubError(
          ctx.repo,
          `${path}: download failed after ${attempts} attempts (${(err as Error).message})`,
          {
            cause: err,
          },
        );
      }
      await sleep(delay); // cut connection: resume from what is on disk
      delay *= 2;
    }
  }
  // Verify the whole file, including bytes an earlier process downloaded.
  const hasher = hasherFor(remote.etag, remote.size);
  if (hasher) {
    await pipeline(createReadStream(incomplete), hasher);
    const actual = hasher.digest('hex');
    if (actual !== remote.etag) {
      await unlink(incomplete);
      throw new ChecksumError(ctx.repo, path, remote.etag, actual);
    }
  }
  await rename(incomplete, blob);
}

/** One GET from the current length of `incomplete` to the end; throws on a cut connection. */
async function fetchRange(ctx: DownloadContext, path: string, remote: RemoteFile, incomplete: string): Promise<void> {
  let have = existsSync(incomplete) ? statSync(incomplete).size : 0;
  if (have > remote.size) {
    await truncate(incomplete, 0);
    have = 0;
  }
  if (have === remote.size) return;
  const range: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
  const res = await fetch(remote.url, { headers: headersFor(ctx.hub, remote.url, range) });
  if (res.status === 416 && have > 0) {
    // The server says nothing is left past `have` but the size disagrees: start over.
    await truncate(incomplete, 0);
    throw new Error('range not satisfiable');
  }
  if (!res.ok) {
    if (res.status >= 500 || res.status === 429) throw new Error(`HTTP ${res.status}`); // transient: retry
    throw statusError(ctx.repo, path, res.status);
  }
  if (!res.body) throw new Error('empty body');
  // 206: the server continues where we stopped; 200: it ignored Range and sends everything.
  const append = res.status === 206 && have > 0;
  if (append) {
    const start = Number(/bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1]);
    if (start !== have) throw new Error(`server resumed at byte ${start}, expected ${have}`);
  } else if (have > 0) {
    ctx.onBytes?.(-have);
  }
  const counter = async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) {
      ctx.onBytes?.(chunk.length);
      yield chunk;
    }
  };
  await pipeline(
    Readable.fromWeb(res.body as ReadableStream<Uint8Array>),
    counter,
    createWriteStream(incomplete, { flags: append ? 'a' : 'w' }),
  );
  const got = statSync(incomplete).size;
  if (got !== remote.size) throw new Error(`connection closed at ${got} of ${remote.size} bytes`);
}
