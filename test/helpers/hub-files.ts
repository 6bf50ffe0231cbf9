/**
 * @file A model folder seen as a Hugging Face repo: its files with the ids the hub gives them (git blob sha1 for
 * small files, sha256 for LFS files), and the same folder laid out as a hub cache (what huggingface_hub writes).
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

/** One file of a repo as the hub describes it. */
export interface RepoFile {
  path: string;
  content: Buffer;
  /** Git blob sha1 of the file (or, for LFS, of its pointer). */
  oid: string;
  /** sha256 of the content, for files stored with LFS. */
  lfs?: { oid: string; pointer: Buffer };
}

const gitOid = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

/** Every file under `dir` as a repo file; `*.safetensors` are LFS files, as on the hub. */
export function repoFiles(dir: string, extra: Record<string, Buffer> = {}): RepoFile[] {
  const walk = (d: string): string[] =>
    readdirSync(d).flatMap((n) => (statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [join(d, n)]));
  const entries: [string, Buffer][] = [
    ...walk(dir).map((f) => [relative(dir, f), readFileSync(f)] as [string, Buffer]),
    ...Object.entries(extra),
  ];
  return entries.map(([path, content]) => {
    if (!path.endsWith('.safetensors')) return { path, content, oid: gitOid(content) };
    const sha = createHash('sha256').update(content).digest('hex');
    const pointer = Buffer.from(
      `version https://git-lfs.github.com/spec/v1\noid sha256:${sha}\nsize ${content.length}\n`,
    );
    return { path, content, oid: gitOid(pointer), lfs: { oid: sha, pointer } };
  });
}

/** A fake commit id. */
export const COMMIT = 'c0ffee0000000000000000000000000000000001';

/**
 * Lays `dir` out as `<cacheDir>/models--org--name` at `commit` (blobs named by etag, relative snapshot symlinks,
 * `refs/main`), as huggingface_hub leaves a downloaded repo. Returns the snapshot folder.
 */
export function layOutHubCache(dir: string, cacheDir: string, repo: string, commit = COMMIT): string {
  const root = join(cacheDir, `models--${repo.replace('/', '--')}`);
  const snapshot = join(root, 'snapshots', commit);
  for (const f of repoFiles(dir)) {
    const blob = join(root, 'blobs', f.lfs?.oid ?? f.oid);
    mkdirSync(dirname(blob), { recursive: true });
    copyFileSync(join(dir, f.path), blob);
    const link = join(snapshot, f.path);
    mkdirSync(dirname(link), { recursive: true });
    symlinkSync(relative(dirname(link), blob), link);
  }
  mkdirSync(join(root, 'refs'), { recursive: true });
  writeFileSync(join(root, 'refs', 'main'), commit);
  return snapshot;
}
