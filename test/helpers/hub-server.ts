/**
 * @file A local HTTP server that speaks the Hugging Face hub's file API for one repo, as the real hub does:
 *
 * - `HEAD|GET /<org>/<name>/resolve/<rev>/<path>`: small files answer 200 with `ETag` (git blob sha1),
 *   `X-Repo-Commit` and the bytes; LFS files answer 302 to the storage URL with `X-Linked-Etag` (sha256),
 *   `X-Linked-Size`, `ETag` (the pointer's sha1) and `X-Repo-Commit`. Unknown revision or file: 404.
 * - `GET /lfs/<sha256>`: the storage host (a second port, so another origin, as the real CDN is), with
 *   `Range: bytes=n-` (206 + `Content-Range`).
 * - `GET /api/models/<org>/<name>/tree/<rev>?recursive=true`: the listing, paginated with `Link: <…>; rel="next"`.
 *
 * Knobs for failure tests: a token it requires, a number of bytes after which the first storage download of a
 * file is cut (socket destroyed), a file whose stored bytes are corrupted. Every request is recorded.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { COMMIT, type RepoFile } from './hub-files.ts';

export interface HubRequest {
  method: string;
  url: string;
  range?: string;
  authorization?: string;
}

export interface HubServerOptions {
  repo: string;
  files: RepoFile[];
  commit?: string;
  /** Require `Authorization: Bearer <token>` on the hub's own routes (not on storage, like the real CDN). */
  token?: string;
  /** Path → bytes after which the first storage download of that file is cut. */
  cutAfter?: Record<string, number>;
  /** Paths whose storage bytes have one byte flipped (the announced sha256 stays the true one). */
  corrupt?: string[];
  /** Tree entries per page. @default 4 */
  pageSize?: number;
}

export interface HubServer {
  url: string;
  requests: HubRequest[];
  close(): Promise<void>;
}

export async function startHubServer(options: HubServerOptions): Promise<HubServer> {
  const commit = options.commit ?? COMMIT;
  const requests: HubRequest[] = [];
  const cutDone = new Set<string>();
  const bySha = new Map(options.files.filter((f) => f.lfs).map((f) => [f.lfs!.oid, f]));
  const pageSize = options.pageSize ?? 4;
  const stored = (f: RepoFile) => {
    if (!options.corrupt?.includes(f.path)) return f.content;
    const bad = Buffer.from(f.content);
    bad[bad.length >> 1] = bad[bad.length >> 1]! ^ 0xff;
    return bad;
  };
  const authorized = (req: IncomingMessage) =>
    !options.token || req.headers.authorization === `Bearer ${options.token}`;

  let storageBase = '';
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    requests.push({
      method: req.method ?? '',
      url: url.pathname + url.search,
      ...(req.headers.range ? { range: req.headers.range } : {}),
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
    });
    const base = `http://${req.headers.host}`;
    const repoPrefix = `/${options.repo}/resolve/`;
    const treePrefix = `/api/models/${options.repo}/tree/`;

    if (url.pathname.startsWith('/lfs/')) {
      const f = bySha.get(url.pathname.slice(5));
      if (!f) return void res.writeHead(404).end();
      const body = stored(f);
      const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      const start = m ? Number(m[1]) : 0;
      if (start >= body.length && m)
        return void res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      const headers: Record<string, string | number> = {
        'content-type': 'application/octet-stream',
        'content-length': body.length - start,
        'accept-ranges': 'bytes',
        ...(m ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
      };
      res.writeHead(m ? 206 : 200, headers);
      const cut = options.cutAfter?.[f.path];
      if (cut !== undefined && !cutDone.has(f.path) && start < cut) {
        cutDone.add(f.path);
        // Send part of the body, then drop the connection mid-transfer.
        res.write(body.subarray(start, cut), () => setTimeout(() => req.socket.destroy(), 20));
        return;
      }
      return void res.end(body.subarray(start));
    }

    if (!authorized(req)) return void res.writeHead(401, { 'x-error-code': 'GatedRepo' }).end();

    if (url.pathname.startsWith(treePrefix)) {
      const rev = decodeURIComponent(url.pathname.slice(treePrefix.length));
      if (rev !== commit && rev !== 'main') return void res.writeHead(404).end();
      const page = Number(url.searchParams.get('cursor') ?? 0);
      const dirs = [...new Set(options.files.flatMap((f) => (f.path.includes('/') ? [f.path.split('/')[0]!] : [])))];
      const all = [
        ...dirs.map((d) => ({ type: 'directory', oid: '0'.repeat(40), size: 0, path: d })),
        ...options.files.map((f) => ({
          type: 'file',
          oid: f.oid,
          size: f.lfs ? f.content.length : f.content.length,
          path: f.path,
          ...(f.lfs ? { lfs: { oid: f.lfs.oid, size: f.content.length, pointerSize: f.lfs.pointer.length } } : {}),
        })),
      ];
      const slice = all.slice(page * pageSize, (page + 1) * pageSize);
      const next = new URL(url.toString().replace('http://x', base));
      next.searchParams.set('cursor', String(page + 1));
      const link = (page + 1) * pageSize < all.length ? { link: `<${next}>; rel="next"` } : {};
      return void res.writeHead(200, { 'content-type': 'application/json', ...link }).end(JSON.stringify(slice));
    }

    if (url.pathname.startsWith(repoPrefix)) {
      const rest = url.pathname.slice(repoPrefix.length);
      const slash = rest.indexOf('/');
      const rev = decodeURIComponent(rest.slice(0, slash));
      const path = rest
        .slice(slash + 1)
        .split('/')
        .map(decodeURIComponent)
        .join('/');
      const f = options.files.find((x) => x.path === path);
      if ((rev !== commit && rev !== 'main') || !f)
        return void res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end();
      if (f.lfs) {
        return void res
          .writeHead(302, {
            location: `${storageBase}/lfs/${f.lfs.oid}?X-Amz-Signature=fake`,
            etag: `"${f.oid}"`,
            'x-linked-etag': `"${f.lfs.oid}"`,
            'x-linked-size': f.content.length,
            'x-repo-commit': commit,
            'content-length': 0,
          })
          .end();
      }
      res.writeHead(200, { etag: `"${f.oid}"`, 'x-repo-commit': commit, 'content-length': f.content.length });
      return void res.end(req.method === 'HEAD' ? undefined : f.content);
    }
    res.writeHead(404).end();
  };
  const listen = async () => {
    const server: Server = createServer(handler);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  };
  const [hub, storage] = [await listen(), await listen()];
  storageBase = storage.url;
  const close = (server: Server) =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return {
    url: hub.url,
    requests,
    close: async () => {
      await Promise.all([close(hub.server), close(storage.server)]);
    },
  };
}
