/** @file Defaults shared by CLI commands. */
import { resolve } from 'node:path';
import { PACKAGE_ROOT } from '../shared/package-root.ts';
import { UsageError } from './errors.ts';

// From src/cli or dist/src/cli alike (see package-root.ts).
const REPO_ROOT = PACKAGE_ROOT;

/** The embedded flux-tiny model shipped in the repository. */
export const DEFAULT_MODEL_DIR = resolve(REPO_ROOT, 'models/flux-tiny');

/** The diffusers reference fixtures for the embedded model, shipped in the repository (without its model copy). */
export const DEFAULT_FIXTURES_DIR = resolve(REPO_ROOT, 'test/fixtures/flux-tiny-reference');

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
