/** @file MODEL_REPO / `--model` → a local model path: an existing folder or file as is, else a hub id's snapshot. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { WeightsError } from '../weights/errors.ts';
import { parseHubModelId } from './repo-id.ts';
import { type ResolveHubModelOptions, resolveHubModel } from './snapshot.ts';

/** Whether `spec` names a hub model rather than a local path (shaped like `org/name[@rev]`, and no such path). */
export function isHubModelSpec(spec: string): boolean {
  return !existsSync(spec) && parseHubModelId(spec) !== undefined;
}

/**
 * A local path for `spec`: the path itself when it exists, else the Hugging Face snapshot of `org/name[@revision]`
 * (see snapshot.ts).
 * @throws WeightsError when `spec` is neither an existing path nor a hub id; HubError / ChecksumError from the hub.
 */
export async function resolveModelPath(spec: string, options: ResolveHubModelOptions): Promise<string> {
  if (existsSync(spec)) return resolve(spec);
  const id = parseHubModelId(spec);
  if (!id)
    throw new WeightsError(resolve(spec), 'model path not found (and not a Hugging Face id org/name[@revision])');
  return resolveHubModel(id, options);
}
