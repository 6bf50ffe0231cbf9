/** @file `fluxql compile`: builds (or finds cached) engines for the given modes and prints their manifests. */
import { loadPipelineSettings } from '../config.ts';
import { defaultCacheDir, ensureEngine, openModelSource } from '../pipeline/flux/engine-cache.ts';

export async function runCompile(args: { model: string; mode: string[]; force?: boolean }): Promise<void> {
  const cacheDir = loadPipelineSettings().cacheDir ?? defaultCacheDir();
  const source = openModelSource(args.model);
  for (const mode of args.mode) {
    const t0 = performance.now();
    const manifest = await ensureEngine(source, { mode, cacheDir, onLog: (m) => process.stderr.write(`${m}\n`) });
    process.stdout.write(`${JSON.stringify({ mode, manifest, seconds: (performance.now() - t0) / 1000, cacheDir })}\n`);
  }
}
