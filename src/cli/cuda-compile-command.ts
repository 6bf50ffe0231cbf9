/**
 * @file `fluxql compile --engine cuda`: plans the CUDA engine's modes ahead of serving and prints one JSON line per
 * mode. It reads the settings `fluxql serve --engine cuda` reads (CUDA_ENGINE_BIN, CUDA_PRECISION, CACHE_DIR,
 * CUDA_LORA_MAX_MB, CUDA_PLANNER_FP8ROW) and runs the server's planner path (`pipeline/cuda-compile.ts`), so the manifest it stores is
 * the one the server's first start reads. Never loads onnxruntime-node (GPU machines ship without its native library).
 */
import { loadConfig } from '../config.ts';
import { compileCudaModes } from '../pipeline/cuda-compile.ts';
import { defaultCacheDir } from '../pipeline/flux/engine-cache.ts';
import { resolveCliModel } from './model-path.ts';

export async function runCudaCompile(args: { model: string; mode: string[] }): Promise<void> {
  const config = loadConfig(process.env, { engine: 'cuda' });
  // As main.ts gives the executor: the planner's manifests live beside the compiled engines.
  const cacheDir = config.cacheDir ?? defaultCacheDir();
  const modelDir = await resolveCliModel(args.model);
  const lines = await compileCudaModes(
    {
      modelDir,
      engineBin: config.cudaEngineBin,
      precision: config.cudaPrecision,
      cacheDir,
      loraMaxMb: config.cudaLoraMaxMb,
      fp8row: config.cudaPlannerFp8row,
      onLog: (m) => process.stderr.write(`${m}\n`),
    },
    args.mode,
  );
  for (const line of lines) process.stdout.write(`${JSON.stringify({ ...line, cacheDir })}\n`);
}
