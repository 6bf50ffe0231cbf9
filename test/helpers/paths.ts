/**
 * @file Paths the tests share. Everything lives inside the repository: the diffusers reference fixtures in
 * `test/fixtures/flux-tiny-reference` (their model, `flux-tiny/`, is the embedded `models/flux-tiny`).
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The diffusers reference outputs for flux-tiny (see its README). */
export const FIXTURES_DIR = join(REPO_ROOT, 'test/fixtures/flux-tiny-reference');
/** The embedded default model: the model the fixtures were computed for. */
export const MODEL_DIR = join(REPO_ROOT, 'models/flux-tiny');
