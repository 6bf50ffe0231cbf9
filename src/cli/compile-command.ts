/**
 * @file `fluxql compile`: makes every given mode ready to serve ahead of time and prints one JSON line per mode with
 * its manifest. Compressed modes (L, M, S) are planned first (per-layer measurements on the original engine, once
 * per model), then compiled from the plan; S also calibrates its step-cache threshold. All of it lands in the cache
 * (CACHE_DIR), so a server started on the same cache loads these engines without planning or compiling.
 */
import { loadPipelineSettings } from '../config.ts';
import type { EngineCompilerPort } from '../pipeline/flux/compiler-port.ts';
import { defaultCacheDir } from '../pipeline/flux/engine-cache.ts';
import { FluxPipeline } from '../pipeline/flux/pipeline.ts';
import { resolveCliModel } from './model-path.ts';

export async function runCompile(args: { model: string; mode: string[] }, compiler: EngineCompilerPort): Promise<void> {
  const settings = loadPipelineSettings();
  const cacheDir = settings.cacheDir ?? defaultCacheDir();
  const onLog = (m: string) => process.stderr.write(`${m}\n`);
  // The same path a server takes on its first request for a mode, so what is cached here is what it loads.
  const model = await resolveCliModel(args.model);
  const pipe = await FluxPipeline.fromPretrained(model, { ...settings, compiler, cacheDir, modes: [], onLog });
  try {
    for (const mode of args.mode) {
      const t0 = performance.now();
      const { manifestPath } = await pipe.engine(mode);
      const seconds = (performance.now() - t0) / 1000;
      process.stdout.write(`${JSON.stringify({ mode, manifest: manifestPath, seconds, cacheDir })}\n`);
    }
  } finally {
    await pipe.close();
  }
}
