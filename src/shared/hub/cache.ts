/**
 * @file The standard Hugging Face hub cache, as huggingface_hub (Python) and @huggingface/hub lay it out, so a
 * cache filled by either is used in place (no copy):
 *
 *   <cache>/models--<org>--<name>/
 *     refs/<revision>                 the commit hash a branch or tag pointed to when last resolved
 *     blobs/<etag>                    file contents, named by sha256 (LFS) or git blob sha1 (small files)
 *     blobs/<etag>.incomplete         a download in progress (resumed from its length)
 *     snapshots/<commit>/<path>       relative symlinks into blobs/ (plain files are accepted too)
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { COMMIT_HASH } from './repo-id.ts';

/** Where the hub cache is and how to reach the hub. */
export interface HubOptions {
  /** The hub cache folder (HF_HUB_CACHE, else `<HF_HOME>/hub`). */
  cacheDir: string;
  /** HF_ENDPOINT. @default 'https://huggingface.co' */
  endpoint: string;
  /** HF_TOKEN or HUGGINGFACE_ACCESS_TOKEN. */
  token?: string;
  /** HF_HUB_OFFLINE: never touch the network. */
  offline: boolean;
}

/** The default hub cache folder, as huggingface_hub computes it (HF_HUB_CACHE > HF_HOME/hub > XDG/~/.cache). */
export function defaultHubCacheDir(env: NodeJS.ProcessEnv): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  const home = env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

/**
 * `<cache>/models--org--name` (the naming of huggingface_hub and of @huggingface/hub's `getRepoFolderName`; spelled
 * out here so resolving a cached model does not load that package, which is imported only to download).
 */
export function repoCacheFolder(cacheDir: string, repo: string): string {
  return join(cacheDir, `models--${repo.split('/').join('--')}`);
}

/** The commit a revision points to in the cache (a commit hash is itself), or undefined when never resolved. */
export function cachedCommit(repoFolder: string, revision: string): string | undefined {
  if (COMMIT_HASH.test(revision)) return revision;
  const ref = join(repoFolder, 'refs', revision);
  if (!existsSync(ref)) return undefined;
  const commit = readFileSync(ref, 'utf8').trim();
  return COMMIT_HASH.test(commit) ? commit : undefined;
}

/** The snapshot folder of `commit`, when it exists. */
export function snapshotFolder(repoFolder: string, commit: string): string | undefined {
  const dir = join(repoFolder, 'snapshots', commit);
  return existsSync(dir) && statSync(dir).isDirectory() ? dir : undefined;
}

/** `org/name` when `dir` is a snapshot folder of a hub cache (`…/models--org--name/snapshots/<commit>`). */
export function hubRepoOfSnapshot(dir: string): string | undefined {
  const m = /models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\][0-9a-f]{40}[/\\]?$/.exec(dir);
  return m ? `${m[1]}/${m[2]}` : undefined;
}
