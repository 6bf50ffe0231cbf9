/**
 * @file Where fluxql's own files are (models/flux-tiny, web/dist, bench/results, package.json), whether the code
 * runs from `src/` through tsx or compiled under `dist/`. Paths like `new URL('../..', import.meta.url)` break when
 * the build adds a directory level, so every such path is taken from here instead.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The nearest folder at or above `start` holding fluxql's package.json. */
export function findPackageRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'fluxql') return dir;
      } catch {
        // An unreadable package.json is not ours; keep walking up.
      }
    }
    if (dirname(dir) === dir) throw new Error(`fluxql's package.json not found above ${start}`);
  }
}

/** The repository (package) root: the folder with fluxql's package.json. */
export const PACKAGE_ROOT = findPackageRoot(dirname(fileURLToPath(import.meta.url)));

/** fluxql's version, from package.json. */
export const PACKAGE_VERSION = (
  JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
).version;
