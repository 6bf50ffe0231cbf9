/**
 * @file Finds the module a worker thread or child process should run, in source (`.ts`, development through tsx)
 * or compiled (`.js` under `dist/`, production) form, so code that starts workers or children never hard-codes
 * either. The caller names the source file relative to itself; when the caller itself was compiled (its URL ends
 * in `.js`), the `.js` sibling is used and needs no loader.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** A module to start in a worker thread or a child `node` process. */
export interface EntryModule {
  /** Absolute file path of the module to run. */
  path: string;
  /** The module is TypeScript: it needs the tsx loader (a development run). */
  typescript: boolean;
  /** Arguments for `node` (before the script's own), e.g. `['--import', 'tsx', path]` for a `.ts` entry. */
  nodeArgs: string[];
}

/**
 * Resolves `relative` (a `.ts` path such as `'./worker.ts'`) against `from` (the caller's `import.meta.url`).
 * Compiled callers get the `.js` file emitted beside them; source callers get the `.ts` file, or the `.js` one
 * when only that exists.
 * @throws Error when neither form exists.
 */
export function resolveEntryModule(relative: string, from: string | URL): EntryModule {
  if (!relative.endsWith('.ts')) throw new Error(`entry module must be named by its .ts source: ${relative}`);
  const ts = fileURLToPath(new URL(relative, from));
  const js = fileURLToPath(new URL(relative.replace(/\.ts$/, '.js'), from));
  const compiledCaller = String(from).endsWith('.js');
  if ((compiledCaller || !existsSync(ts)) && existsSync(js)) return { path: js, typescript: false, nodeArgs: [js] };
  if (existsSync(ts)) return { path: ts, typescript: true, nodeArgs: ['--import', 'tsx', ts] };
  throw new Error(`entry module not found: ${ts} (nor ${js})`);
}
