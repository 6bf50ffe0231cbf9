/** @file Defaults shared by CLI commands. */
import { resolve } from 'node:path';
import { EMBEDDED_MODEL_DIR, FLUX_MINI_DIR } from '../config.ts';
import { PACKAGE_ROOT } from '../shared/package-root.ts';
import { UsageError } from './errors.ts';

// From src/cli or dist/src/cli alike (see package-root.ts).
const REPO_ROOT = PACKAGE_ROOT;

/** The embedded model: flux-mini when installed, else flux-tiny (as `npm start` serves). */
export const DEFAULT_MODEL_DIR = EMBEDDED_MODEL_DIR;

/** The diffusers reference fixtures for flux-tiny, shipped in the repository (without its model copy). */
export const DEFAULT_FIXTURES_DIR = resolve(REPO_ROOT, 'test/fixtures/flux-tiny-reference');

/** The diffusers editing fixtures (img2img, inpainting, true CFG) for flux-tiny, run with the default fixtures. */
export const DEFAULT_EDIT_FIXTURES_DIR = resolve(REPO_ROOT, 'test/fixtures/flux-tiny-edit');

/** flux-mini's native size (trained at 256x256); other models keep 512x512. */
export const FLUX_MINI_SIZE = '256x256';
const OTHER_SIZE = '512x512';

/** The `--size` a command uses when none is given: the model's native size where known. */
export function defaultSizeFor(modelDir: string): string {
  return resolve(modelDir) === FLUX_MINI_DIR ? FLUX_MINI_SIZE : OTHER_SIZE;
}

/** Parses `WxH`. */
export function parseSize(size: string): { width: number; height: number } {
  const m = /^(\d+)x(\d+)$/i.exec(size.trim());
  if (!m) throw new UsageError(`--size must look like 512x512, got "${size}"`);
  return { width: Number(m[1]), height: Number(m[2]) };
}

/** Parses an integer option, naming it on error. */
export function parseIntOption(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new UsageError(`${name} must be an integer, got "${value}"`);
  return n;
}
