/**
 * @file `MODEL_REPO=org/name[@revision]` → a local folder: the snapshot of that revision in the Hugging Face cache
 * (see cache.ts), downloading only the files a FLUX pipeline reads that are not there yet.
 *
 * Offline (HF_HUB_OFFLINE=1) nothing touches the network: the revision must already be in the cache (`refs/` or a
 * commit hash). Online, one HEAD resolves the revision to a commit, the repo tree at that commit is listed with
 * @huggingface/hub's `listFiles` (the hub's tree API, paginated), and each missing file is downloaded (download.ts).
 * If the hub cannot be reached, a revision already in the cache is served as huggingface_hub does.
 */
import { existsSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { cachedCommit, type HubOptions, repoCacheFolder, snapshotFolder } from './cache.ts';
import { type DownloadContext, downloadToCache, headFile } from './download.ts';
import { HubError } from './errors.ts';
import { COMMIT_HASH, type HubModelId } from './repo-id.ts';

/** Download progress over the whole model. */
export interface HubProgress {
  /** The file being downloaded. */
  file: string;
  bytes: number;
  totalBytes: number;
}

/** Options of {@link resolveHubModel}. */
export interface ResolveHubModelOptions {
  hub: HubOptions;
  onProgress?: (p: HubProgress) => void;
  onLog?: (message: string) => void;
  /** Attempts per file when a connection is cut. @default 5 */
  attempts?: number;
  retryDelayMs?: number;
}

/** The folders of a diffusers FLUX repo the pipeline reads. */
const COMPONENTS = ['scheduler', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'transformer', 'vae'];
/** File kinds those folders hold that we read (configs, tokenizer files, safetensors weights and shard indexes). */
const WANTED_EXT = /\.(json|txt|model|safetensors)$/;

/**
 * The files of a repo listing that a FLUX pipeline needs: `model_index.json` and the diffusers component folders;
 * the BFL single files (`flux1-*.safetensors`, `ae.safetensors`) only when the repo has no diffusers weights for
 * that component (the FLUX.1-dev repo has both: downloading both would double 34 GB).
 */
export function wantedFiles(paths: readonly string[]): string[] {
  const hasWeights = (dir: string) => paths.some((p) => p.startsWith(`${dir}/`) && p.endsWith('.safetensors'));
  return paths.filter((p) => {
    if (p === 'model_index.json') return true;
    const [top, ...rest] = p.split('/');
    if (rest.length > 0) return COMPONENTS.includes(top!) && WANTED_EXT.test(p);
    if (/^flux1-.*\.safetensors$/.test(p)) return !hasWeights('transformer');
    if (p === 'ae.safetensors') return !hasWeights('vae');
    return false;
  });
}

/**
 * Returns the local snapshot folder of `id`, downloading what is missing unless offline.
 * @throws HubError (offline and not cached, unknown repo, access denied, hub unreachable with nothing cached),
 * ChecksumError (a download did not match its etag).
 */
export async function resolveHubModel(id: HubModelId, options: ResolveHubModelOptions): Promise<string> {
  const { hub } = options;
  const repoFolder = repoCacheFolder(hub.cacheDir, id.repo);
  const label = `${id.repo}@${id.revision}`;
  const cached = () => {
    const commit = cachedCommit(repoFolder, id.revision);
    return commit ? snapshotFolder(repoFolder, commit) : undefined;
  };
  if (hub.offline) {
    const dir = cached();
    if (!dir)
      throw new HubError(
        label,
        `not in the Hugging Face cache (${repoFolder}) and HF_HUB_OFFLINE=1: download it once online, or set HF_HUB_CACHE / HF_HOME to the cache that has it`,
      );
    return dir;
  }

  const ctx: DownloadContext = {
    repo: id.repo,
    hub,
    ...(options.attempts !== undefined ? { attempts: options.attempts } : {}),
    ...(options.retryDelayMs !== undefined ? { retryDelayMs: options.retryDelayMs } : {}),
  };
  let commit: string;
  try {
    commit = COMMIT_HASH.test(id.revision) ? id.revision : await resolveCommit(ctx, id.revision);
  } catch (err) {
    const dir = cached();
    if (err instanceof HubError && /cannot reach/.test(err.message) && dir) {
      options.onLog?.(`${err.message}; using the cached snapshot ${dir}`);
      return dir;
    }
    throw err;
  }
  if (commit !== id.revision) {
    await mkdir(join(repoFolder, 'refs'), { recursive: true });
    await writeFile(join(repoFolder, 'refs', id.revision), commit);
  }

  const listing = new Map<string, number>();
  const { listFiles } = await import('@huggingface/hub');
  try {
    for await (const entry of listFiles({
      repo: { type: 'model', name: id.repo },
      revision: commit,
      recursive: true,
      hubUrl: hub.endpoint.replace(/\/+$/, ''),
      ...(hub.token ? { accessToken: hub.token } : {}),
    })) {
      if (entry.type === 'file') listing.set(entry.path, entry.lfs?.size ?? entry.size);
    }
  } catch (err) {
    const status = (err as { statusCode?: number }).statusCode;
    throw new HubError(label, `cannot list the repo files (${status ? `HTTP ${status}` : (err as Error).message})`, {
      cause: err,
    });
  }
  const files = wantedFiles([...listing.keys()]);
  if (!files.includes('model_index.json') && !files.some((f) => f.startsWith('transformer/')))
    throw new HubError(label, 'not a FLUX model repo: no model_index.json or transformer/ weights');

  const snapshot = join(repoFolder, 'snapshots', commit);
  const missing = files.filter((f) => !existsSync(join(snapshot, f)));
  const totalBytes = missing.reduce((sum, f) => sum + (listing.get(f) ?? 0), 0);
  let bytes = 0;
  if (missing.length > 0)
    options.onLog?.(
      `${label}: downloading ${missing.length} files (${(totalBytes / 1e6).toFixed(1)} MB) into ${repoFolder}`,
    );
  for (const file of missing) {
    const remote = await headFile(ctx, commit, file);
    const onBytes = (n: number) => {
      bytes += n;
      options.onProgress?.({ file, bytes, totalBytes });
    };
    // Bytes an earlier, interrupted run left count as done.
    const partial = join(repoFolder, 'blobs', `${remote.etag}.incomplete`);
    if (existsSync(partial)) onBytes(statSync(partial).size);
    await downloadToCache({ ...ctx, onBytes }, repoFolder, commit, file, remote);
  }
  return snapshot;
}

/** The commit `revision` points to on the hub (X-Repo-Commit of `model_index.json`'s resolve URL). */
async function resolveCommit(ctx: DownloadContext, revision: string): Promise<string> {
  const head = await headFile(ctx, revision, 'model_index.json').catch((err: unknown) => {
    // `org/name` may also be a mistyped local path: say both.
    if (err instanceof HubError && /HTTP 404/.test(err.message))
      throw new HubError(
        `${ctx.repo}@${revision}`,
        `no such model or revision on ${ctx.hub.endpoint} (HTTP 404 for model_index.json), and no local folder ${resolve(ctx.repo)}`,
      );
    throw err;
  });
  if (!head.commit || !COMMIT_HASH.test(head.commit))
    throw new HubError(`${ctx.repo}@${revision}`, 'the hub did not name the commit (no X-Repo-Commit header)');
  return head.commit;
}
