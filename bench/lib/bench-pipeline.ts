/**
 * @file What the mode benchmarks (`latency`, `quality`, `grid`, `quality-grammar`, `cpu-components`, `lora`) share:
 * their common command-line options with the two-core defaults, and opening a pipeline the way the server's engine
 * process does (the environment's pipeline settings, the engine compiler passed in: a benchmark is a composition
 * root, see docs/ARCHITECTURE.md).
 */
import { engineCompiler } from '../../engines/compiler/port.ts';
import { loadPipelineSettings } from '../../src/config.ts';
import { FluxPipeline, type FluxPipelineOptions } from '../../src/pipeline/flux/pipeline.ts';

/** Options of the per-mode benchmarks (`parseArgs` config): 128×128 pixels, 8 steps, 64 T5 tokens on two cores. */
export const MODE_BENCH_OPTIONS = {
  size: { type: 'string', default: '128' },
  steps: { type: 'string', default: '8' },
  text: { type: 'string', default: '64' },
  threads: { type: 'string' },
  only: { type: 'string' },
} as const;

/** The numbers of {@link MODE_BENCH_OPTIONS}' values. */
export function modeBenchSettings(values: { size: string; steps: string; text: string; threads?: string }) {
  return {
    size: Number(values.size),
    steps: Number(values.steps),
    textTokens: Number(values.text),
    threads: values.threads ? Number(values.threads) : undefined,
  };
}

/** Opens `dir` with the environment's pipeline settings (CACHE_DIR, LORA_DIR, ...) over `options`. */
export function openBenchPipeline(
  dir: string,
  options: Omit<FluxPipelineOptions, 'compiler'> & { onLog: (message: string) => void },
): Promise<FluxPipeline> {
  return FluxPipeline.fromPretrained(dir, { compiler: engineCompiler, ...loadPipelineSettings(), ...options });
}
