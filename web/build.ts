/**
 * @file Builds the web page when `web/dist` is missing or older than its sources, so `npm start` (its `prestart`
 * script) and the browser tests never serve a stale or absent page, while the server itself never builds.
 * `npm run build:web` always builds; this only decides whether to.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB_DIR = fileURLToPath(new URL('.', import.meta.url));
const REPO_ROOT = join(WEB_DIR, '..');
/** The build output the server serves. */
export const WEB_DIST_INDEX = join(WEB_DIR, 'dist', 'index.html');

/** Newest modification time (ms) among files under `path` (a file or a folder). */
function newestMtime(path: string): number {
  const info = statSync(path);
  if (!info.isDirectory()) return info.mtimeMs;
  return readdirSync(path).reduce((max, name) => Math.max(max, newestMtime(join(path, name))), info.mtimeMs);
}

/** Whether the build is absent or older than a source (page, config, or the schema its operations are typed from). */
export function webBuildIsStale(): boolean {
  if (!existsSync(WEB_DIST_INDEX)) return true;
  const built = statSync(WEB_DIST_INDEX).mtimeMs;
  const sources = ['index.html', 'src', 'vite.config.ts'].map((p) => join(WEB_DIR, p));
  sources.push(join(REPO_ROOT, 'schema', 'schema.graphql'));
  return sources.some((p) => existsSync(p) && newestMtime(p) > built);
}

/** Runs `vite build` in a child process (output to this process's stdio); throws when it fails. */
export function buildWeb(): void {
  const vite = join(REPO_ROOT, 'node_modules', 'vite', 'bin', 'vite.js');
  const result = spawnSync(process.execPath, [vite, 'build', '--config', join(WEB_DIR, 'vite.config.ts')], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (result.status !== 0) throw new Error(`vite build failed (exit ${result.status ?? result.signal})`);
}

/** Builds only when {@link webBuildIsStale}; returns whether it built. */
export function ensureWebBuilt(): boolean {
  if (!webBuildIsStale()) return false;
  buildWeb();
  return true;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv.includes('--if-stale')) {
    if (!ensureWebBuilt()) console.log('[web] web/dist is up to date');
  } else {
    buildWeb();
  }
}
