/**
 * @file Reads the CUDA engine's benchmark results (`bench/results/cuda-h100.json`, written by
 * `fluxql-engine --bench`) into {@link BenchmarkLatency} rows for the `models` query.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { z } from 'zod';
import type { BenchmarkLatency } from './executor.ts';

const BenchFile = z
  .object({
    device: z.string(),
    weights: z.string().optional(),
    size: z.union([z.number(), z.string()]),
    steps: z.number().int().positive(),
    iters: z.number().int().positive(),
    date: z.string().optional(),
    results: z.array(
      z
        .object({
          precision: z.string(),
          runs: z.array(
            z.object({ batch: z.number().int().positive(), s_per_image: z.number(), step_ms: z.number() }).loose(),
          ),
        })
        .loose(),
    ),
  })
  .loose();

/** `1024` → 1024×1024; `"1280x720"` → 1280 wide, 720 high. */
function sizeOf(size: number | string): { width: number; height: number } {
  if (typeof size === 'number') return { width: size, height: size };
  const m = /^(\d+)(?:x(\d+))?$/.exec(size.trim());
  if (!m) throw new Error(`bad size ${JSON.stringify(size)}`);
  const width = Number(m[1]);
  return { width, height: m[2] ? Number(m[2]) : width };
}

/**
 * The rows of `file` measured at `precision` (one per batch size), mode `original`. A missing or malformed file
 * gives no rows and a message through `onLog`: the numbers are informative, never needed to serve.
 */
export function readCudaBenchmarks(
  file: string,
  precision: string,
  onLog?: (message: string) => void,
): BenchmarkLatency[] {
  let parsed: z.infer<typeof BenchFile>;
  try {
    parsed = BenchFile.parse(JSON.parse(readFileSync(file, 'utf8')));
  } catch (err) {
    onLog?.(`no CUDA benchmark rows from ${file}: ${(err as Error).message.split('\n')[0]}`);
    return [];
  }
  const { width, height } = sizeOf(parsed.size);
  const shown = relative(process.cwd(), file) || file;
  const weights = parsed.weights ?? 'unknown weights';
  return parsed.results
    .filter((r) => r.precision === precision)
    .flatMap((r) =>
      r.runs.map((run) => ({
        mode: 'original',
        hardware: parsed.device,
        width,
        height,
        steps: parsed.steps,
        batch: run.batch,
        latencySeconds: run.s_per_image,
        meanStepMs: run.step_ms,
        runs: parsed.iters,
        source:
          `${shown}${parsed.date ? ` (${parsed.date})` : ''}: fluxql-engine ${r.precision}, batch ${run.batch}, ` +
          `seconds per image end to end, mean of ${parsed.iters} after a warm-up; weights: ${weights}`,
      })),
    );
}
