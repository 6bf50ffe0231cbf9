/** @file Models by Hugging Face id: the standard hub cache, offline mode, resumable verified downloads. */
export { defaultHubCacheDir, type HubOptions, hubRepoOfSnapshot, repoCacheFolder } from './cache.ts';
export { ChecksumError, HubError } from './errors.ts';
export { isHubModelSpec, resolveModelPath } from './model-path.ts';
export { type HubModelId, parseHubModelId } from './repo-id.ts';
export { type HubProgress, type ResolveHubModelOptions, resolveHubModel, wantedFiles } from './snapshot.ts';
