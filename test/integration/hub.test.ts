/**
 * Models by Hugging Face id against a local server that speaks the hub's file API (test/helpers/hub-server.ts):
 * the cache layout huggingface_hub uses, resume after a cut connection, checksums, tokens, offline mode.
 */
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ChecksumError,
  HubError,
  type HubOptions,
  resolveHubModel,
  resolveModelPath,
} from '../../src/shared/hub/index.ts';
import { resolveModelRepo } from '../../src/shared/weights/index.ts';
import { COMMIT, layOutHubCache, type RepoFile, repoFiles } from '../helpers/hub-files.ts';
import { type HubServer, type HubServerOptions, startHubServer } from '../helpers/hub-server.ts';
import { MODEL_DIR } from '../helpers/paths.ts';

const REPO = 'acme/flux-tiny';
const TOKEN = 'hf_test_token';
const TRANSFORMER = 'transformer/diffusion_pytorch_model.safetensors';
// Files a FLUX pipeline does not read: they must not be downloaded.
const EXTRA = { 'README.md': Buffer.from('# flux-tiny\n'), 'flux1-dev.safetensors': Buffer.from('not needed') };
const files: RepoFile[] = repoFiles(MODEL_DIR, EXTRA);
const byPath = new Map(files.map((f) => [f.path, f]));

let servers: HubServer[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
});

async function hub(opts: Partial<HubServerOptions> = {}) {
  const server = await startHubServer({ repo: REPO, files, token: TOKEN, ...opts });
  servers.push(server);
  return server;
}

const freshCache = () => mkdtempSync(join(tmpdir(), 'fluxql-hub-'));
const options = (endpoint: string, cacheDir: string, extra: Partial<HubOptions> = {}): HubOptions => ({
  cacheDir,
  endpoint,
  token: TOKEN,
  offline: false,
  ...extra,
});
const repoFolder = (cacheDir: string) => join(cacheDir, 'models--acme--flux-tiny');
const storageGets = (s: HubServer) => s.requests.filter((r) => r.method === 'GET' && r.url.startsWith('/lfs/'));

describe('MODEL_REPO=org/name through the Hugging Face cache', () => {
  it('downloads what the pipeline needs into the standard cache layout, then reuses it', async () => {
    const server = await hub();
    const cacheDir = freshCache();
    const progress: number[] = [];
    const dir = await resolveHubModel(
      { repo: REPO, revision: 'main' },
      { hub: options(server.url, cacheDir), onProgress: (p) => progress.push(p.bytes) },
    );
    const root = repoFolder(cacheDir);
    expect(dir).toBe(join(root, 'snapshots', COMMIT));
    expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe(COMMIT);
    // Snapshot entries are relative symlinks into blobs/, named by sha256 (LFS) or git sha1.
    const link = join(dir, TRANSFORMER);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe(`../../../blobs/${byPath.get(TRANSFORMER)!.lfs!.oid}`);
    expect(readlinkSync(join(dir, 'model_index.json'))).toBe(`../../blobs/${byPath.get('model_index.json')!.oid}`);
    for (const f of files.filter((f) => !(f.path in EXTRA))) {
      expect(readFileSync(join(dir, f.path)).equals(f.content), f.path).toBe(true);
    }
    expect(existsSync(join(dir, 'README.md'))).toBe(false);
    expect(existsSync(join(dir, 'flux1-dev.safetensors'))).toBe(false); // diffusers transformer/ is there
    expect(readdirSync(join(root, 'blobs')).filter((b) => b.endsWith('.incomplete'))).toEqual([]);
    // Progress climbs to the total; the listing was paginated; LFS storage never saw the token.
    expect(progress.at(-1)).toBe(files.filter((f) => !(f.path in EXTRA)).reduce((s, f) => s + f.content.length, 0));
    expect(server.requests.filter((r) => r.url.includes('/tree/')).length).toBeGreaterThan(1);
    expect(storageGets(server).every((r) => r.authorization === undefined)).toBe(true);
    expect(resolveModelRepo(dir).layout).toBe('diffusers');

    const before = server.requests.length;
    await resolveHubModel({ repo: REPO, revision: 'main' }, { hub: options(server.url, cacheDir) });
    const again = server.requests.slice(before);
    expect(again.filter((r) => r.method === 'GET' && !r.url.includes('/tree/'))).toEqual([]); // nothing downloaded
  });

  it('resumes a cut connection with an HTTP Range request, and a partial file left by an earlier run', async () => {
    const transformer = byPath.get(TRANSFORMER)!;
    const half = transformer.content.length >> 1;
    const server = await hub({ cutAfter: { [TRANSFORMER]: half } });
    const cacheDir = freshCache();
    // An earlier, interrupted process left the first 1000 bytes of the VAE.
    const vae = byPath.get('vae/diffusion_pytorch_model.safetensors')!;
    mkdirSync(join(repoFolder(cacheDir), 'blobs'), { recursive: true });
    writeFileSync(join(repoFolder(cacheDir), 'blobs', `${vae.lfs!.oid}.incomplete`), vae.content.subarray(0, 1000));

    const dir = await resolveHubModel(
      { repo: REPO, revision: 'main' },
      { hub: options(server.url, cacheDir), retryDelayMs: 10 },
    );
    expect(readFileSync(join(dir, TRANSFORMER)).equals(transformer.content)).toBe(true);
    expect(readFileSync(join(dir, 'vae/diffusion_pytorch_model.safetensors')).equals(vae.content)).toBe(true);
    const gets = storageGets(server);
    const transformerGets = gets.filter((r) => r.url.startsWith(`/lfs/${transformer.lfs!.oid}`));
    expect(transformerGets.map((r) => r.range)).toEqual([undefined, expect.stringMatching(/^bytes=\d+-$/)]);
    const resumedAt = Number(/bytes=(\d+)-/.exec(transformerGets[1]!.range!)![1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(half);
    expect(gets.filter((r) => r.url.startsWith(`/lfs/${vae.lfs!.oid}`)).map((r) => r.range)).toEqual(['bytes=1000-']);
  });

  it('refuses a file whose sha256 does not match the etag, keeping nothing of it', async () => {
    const server = await hub({ corrupt: [TRANSFORMER] });
    const cacheDir = freshCache();
    const err = await resolveHubModel({ repo: REPO, revision: 'main' }, { hub: options(server.url, cacheDir) }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ChecksumError);
    expect((err as Error).message).toMatch(/transformer\/diffusion_pytorch_model\.safetensors: checksum mismatch/);
    const sha = byPath.get(TRANSFORMER)!.lfs!.oid;
    expect(existsSync(join(repoFolder(cacheDir), 'blobs', sha))).toBe(false);
    expect(existsSync(join(repoFolder(cacheDir), 'blobs', `${sha}.incomplete`))).toBe(false);
    expect(existsSync(join(repoFolder(cacheDir), 'snapshots', COMMIT, TRANSFORMER))).toBe(false);
  });

  it('names HF_TOKEN when the hub refuses access', async () => {
    const server = await hub();
    const err = await resolveHubModel(
      { repo: REPO, revision: 'main' },
      { hub: { cacheDir: freshCache(), endpoint: server.url, offline: false } },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubError);
    expect((err as Error).message).toMatch(/access denied \(HTTP 401\).*HF_TOKEN/);
  });

  it('HF_HUB_OFFLINE=1 serves a cache folder and never touches the network', async () => {
    const server = await hub();
    const cacheDir = freshCache();
    const snapshot = layOutHubCache(MODEL_DIR, cacheDir, REPO);
    const hubOpts = options(server.url, cacheDir, { offline: true });
    expect(await resolveModelPath(REPO, { hub: hubOpts })).toBe(snapshot);
    expect(await resolveModelPath(`${REPO}@${COMMIT}`, { hub: hubOpts })).toBe(snapshot);
    await expect(resolveModelPath(`${REPO}@v2`, { hub: hubOpts })).rejects.toThrow(/not in the Hugging Face cache/);
    await expect(resolveModelPath('acme/other', { hub: hubOpts })).rejects.toThrow(HubError);
    expect(server.requests).toEqual([]);
    expect(resolveModelRepo(snapshot).components.transformer.files[0]).toBe(join(snapshot, TRANSFORMER));
  });

  it('serves the cached revision when the hub cannot be reached', async () => {
    const server = await hub();
    const endpoint = server.url;
    await server.close(); // nothing listens there any more
    servers = [];
    const cacheDir = freshCache();
    const snapshot = layOutHubCache(MODEL_DIR, cacheDir, REPO);
    const logs: string[] = [];
    expect(await resolveModelPath(REPO, { hub: options(endpoint, cacheDir), onLog: (m) => logs.push(m) })).toBe(
      snapshot,
    );
    expect(logs.join('\n')).toMatch(/cannot reach .*using the cached snapshot/);
  });
});

describe('hub snapshots in the pipeline', () => {
  it('names a snapshot by its repo id, not its commit folder', async () => {
    const { openModelSource } = await import('../../src/pipeline/flux/engine-cache.ts');
    const snapshot = layOutHubCache(MODEL_DIR, freshCache(), REPO);
    expect(openModelSource(snapshot).name).toBe(REPO);
    expect(openModelSource(MODEL_DIR).name).toBe('flux-tiny');
  });
});

describe('a cache shared by several processes', () => {
  it('downloads each blob once when two resolutions run at the same time', async () => {
    const server = await hub();
    const cacheDir = freshCache();
    const id = { repo: REPO, revision: 'main' };
    const [a, b] = await Promise.all([
      resolveHubModel(id, { hub: options(server.url, cacheDir) }),
      resolveHubModel(id, { hub: options(server.url, cacheDir) }),
    ]);
    expect(a).toBe(b);
    for (const f of files.filter((f) => f.lfs && !(f.path in EXTRA))) {
      expect(
        storageGets(server).filter((r) => r.url.startsWith(`/lfs/${f.lfs!.oid}`)),
        f.path,
      ).toHaveLength(1);
      expect(readFileSync(join(a, f.path)).equals(f.content), f.path).toBe(true);
    }
  });
});

describe('hub errors', () => {
  it('names both readings of an id that is neither on the hub nor a local folder', async () => {
    const server = await startHubServer({ repo: 'acme/other', files });
    servers.push(server);
    await expect(
      resolveModelPath('models/flux-tinyy', { hub: options(server.url, freshCache(), { token: undefined }) }),
    ).rejects.toThrow(
      /models\/flux-tinyy@main: no such model or revision on .*\(HTTP 404.*\), and no local folder \S*models\/flux-tinyy/,
    );
  });
});
