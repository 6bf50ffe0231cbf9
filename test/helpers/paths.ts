/**
 * @file Paths the tests share. The shared fixtures live beside the repository (`../shared`), as on CI;
 * the embedded model ships inside the repository.
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The diffusers reference outputs for flux-tiny (see its README). */
export const FIXTURES_DIR = process.env.FLUXQL_FIXTURES ?? resolve(REPO_ROOT, '../shared/fixtures/flux-tiny-reference');
/** The embedded default model, a copy of the fixtures' flux-tiny. */
export const MODEL_DIR = join(REPO_ROOT, 'models/flux-tiny');
