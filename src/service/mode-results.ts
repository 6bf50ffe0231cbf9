/**
 * @file Reads the mode benchmarks' results (`bench/results/modes.json`, written by `bench/lib/modes-report.ts`;
 * layout documented there) once at start: per model and mode, a benchmark latency row, the quality against
 * `original` (PSNR/SSIM) and the planner's summary (error budget, measured error, layers per algorithm, step
 * cache). The `models` query shows them next to the seed card's published numbers. A missing or malformed file
 * gives no rows and a message through `onLog`: the numbers are informative, never needed to serve.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { z } from 'zod';
import type { BenchmarkLatency, PlanLayer } from './pipeline.ts';

const num = z.number().finite();

const ModeRow = z
  .object({
    latencyMs: num.optional(),
    latencyStdMs: num.optional(),
    latencyMedianMs: num.optional(),
    transformerForwardMs: num.optional(),
    speedup: num.optional(),
    psnr: num.optional(),
    ssim: num.optional(),
    /** Grammar-prompt following per attribute (bench:quality on flux-mini), fractions in [0, 1]. */
    promptAccuracy: z.record(z.string(), num).optional(),
    promptCount: z.number().int().positive().optional(),
    plan: z
      .object({ budget: num, measuredError: num, algorithms: z.record(z.string(), z.number().int().nonnegative()) })
      .loose()
      .nullable()
      .optional(),
    stepCache: z
      .object({ threshold: num, fullSteps: z.number().int(), cachedSteps: z.number().int() })
      .loose()
      .nullable()
      .optional(),
  })
  .loose();

const ModesFile = z
  .object({
    updatedAt: z.string().optional(),
    machine: z
      .object({ cpu: z.string(), cores: z.number().optional(), memoryGiB: z.number().optional() })
      .loose()
      .optional(),
    provider: z.string().optional(),
    models: z.record(
      z.string(),
      z
        .object({
          latency: z
            .object({
              size: z.number().int().positive(),
              steps: z.number().int().positive(),
              runs: z.number().int().positive().optional(),
              batch: z.number().int().positive().optional(),
              date: z.string().optional(),
            })
            .loose()
            .optional(),
          quality: z
            .object({
              size: z.number().int().positive().optional(),
              steps: z.number().int().positive().optional(),
              prompts: z.number().int().positive().optional(),
              date: z.string().optional(),
            })
            .loose()
            .optional(),
          modes: z.record(z.string(), ModeRow),
        })
        .loose(),
    ),
  })
  .loose();

/** Quality of a mode's images against `original`'s (same prompts and seeds). */
export interface ModeQuality {
  /** Mean PSNR in dB (100 for identical images). */
  psnr: number;
  /** Mean SSIM (1 for identical images). */
  ssim: number;
  /** What the images are compared with. */
  reference: 'original';
  /**
   * How well the mode's images follow prompts of flux-mini's caption grammar, as the deterministic detector judges
   * them (`npm run bench:quality`); null when not measured (models without the grammar, e.g. FLUX.1-dev, flux-tiny).
   */
  promptFollowing: PromptFollowing | null;
  /** The result file and what was measured. */
  source: string;
}

/** Accuracy per attribute (fractions in [0, 1]); position and size count only prompts that name them. */
export interface PromptFollowing {
  background: number | null;
  color: number | null;
  shape: number | null;
  position: number | null;
  size: number | null;
  /** Prompts judged. */
  prompts: number | null;
}

/** The compression planner's choice for a mode, summarised. */
export interface ModePlanSummary {
  /** Error budget relative to `original`; null for a mode with only step caching. */
  errorBudget: number | null;
  /** The chosen layers' summed measured error; null as for `errorBudget`. */
  measuredError: number | null;
  /** Layers per algorithm (e.g. `int8-dyn`, `fp32`), most layers first. */
  algorithms: { algorithm: string; layers: number }[];
  /**
   * Step caching (mode S on ONNX; the planned modes on CUDA, threshold 0 when calibration kept none), when planned.
   * `psnr` / `minPsnr`: the CUDA planner's calibration (worst calibration image at the threshold against `original`,
   * and the mode's floor, dB); absent for benchmark rows. `maxConsecutive`: most steps cached in a row (the CUDA
   * planner's rule); absent where not known.
   */
  stepCache: {
    threshold: number;
    maxConsecutive?: number;
    fullSteps: number;
    cachedSteps: number;
    psnr?: number;
    minPsnr?: number;
  } | null;
  source: string;
  /**
   * Per-layer choices of this server's engine for the mode (its cached plan, as compiled into the engine manifest);
   * empty when unknown: not planned yet, or no local engine (scale-out API node). Filled by the service.
   */
  layers: PlanLayer[];
}

/** What the mode benchmark recorded for one (model, mode). */
export interface ModeResult {
  benchmark: BenchmarkLatency | null;
  quality: ModeQuality | null;
  plan: ModePlanSummary | null;
}

/** The parsed result file; {@link ModeResults.forMode} answers per model and mode. */
export class ModeResults {
  constructor(
    private readonly file: z.infer<typeof ModesFile>,
    private readonly shown: string,
  ) {}

  /** The recorded numbers of `mode` (case-insensitive) of `modelName`; all null when the file has none. */
  forMode(modelName: string, mode: string): ModeResult {
    const model = this.file.models[modelName];
    const key = model && Object.keys(model.modes).find((m) => m.toLowerCase() === mode.toLowerCase());
    const row = key !== undefined ? model?.modes[key] : undefined;
    if (!model || !row) return { benchmark: null, quality: null, plan: null };
    const { machine, provider, updatedAt } = this.file;
    const hardware = machine
      ? `${machine.cpu}${machine.cores ? `, ${machine.cores} cores` : ''}${machine.memoryGiB ? `, ${machine.memoryGiB} GiB` : ''}`
      : 'unknown machine';
    const lat = model.latency;
    const benchmark: BenchmarkLatency | null =
      lat && row.latencyMs !== undefined
        ? {
            mode,
            hardware,
            width: lat.size,
            height: lat.size,
            steps: lat.steps,
            batch: lat.batch ?? 1,
            latencySeconds: row.latencyMs / 1000,
            meanStepMs: row.transformerForwardMs ?? row.latencyMs / lat.steps,
            runs: lat.runs ?? 1,
            source:
              `${this.shown}${lat.date ? ` (${lat.date})` : ''}: mode benchmark on ${provider ?? 'unknown provider'}, ` +
              `mean generation time of ${lat.runs ?? '?'} runs after a warm-up; step ms = ` +
              (row.transformerForwardMs !== undefined ? 'median transformer forward' : 'latency / steps'),
          }
        : null;
    const q = model.quality;
    const quality: ModeQuality | null =
      row.psnr !== undefined && row.ssim !== undefined
        ? {
            psnr: row.psnr,
            ssim: row.ssim,
            reference: 'original',
            promptFollowing: row.promptAccuracy
              ? {
                  background: row.promptAccuracy.background ?? null,
                  color: row.promptAccuracy.color ?? null,
                  shape: row.promptAccuracy.shape ?? null,
                  position: row.promptAccuracy.position ?? null,
                  size: row.promptAccuracy.size ?? null,
                  prompts: row.promptCount ?? null,
                }
              : null,
            source:
              `${this.shown}${q?.date ? ` (${q.date})` : ''}: mean over ${q?.prompts ?? '?'} prompts` +
              `${q?.size ? ` at ${q.size}×${q.size}` : ''}${q?.steps ? `, ${q.steps} steps` : ''}, vs original`,
          }
        : null;
    const plan: ModePlanSummary | null =
      row.plan || row.stepCache
        ? {
            errorBudget: row.plan?.budget ?? null,
            measuredError: row.plan?.measuredError ?? null,
            algorithms: Object.entries(row.plan?.algorithms ?? {})
              .map(([algorithm, layers]) => ({ algorithm, layers }))
              .sort((a, b) => b.layers - a.layers || a.algorithm.localeCompare(b.algorithm)),
            stepCache: row.stepCache
              ? {
                  threshold: row.stepCache.threshold,
                  fullSteps: row.stepCache.fullSteps,
                  cachedSteps: row.stepCache.cachedSteps,
                }
              : null,
            source: `${this.shown}${updatedAt ? ` (${updatedAt})` : ''}: planner summary of the compiled engine`,
            layers: [],
          }
        : null;
    return { benchmark, quality, plan };
  }
}

/** Reads `file`; `undefined` (and a message through `onLog`) when it is missing or malformed. */
export function readModeResults(file: string, onLog?: (message: string) => void): ModeResults | undefined {
  try {
    const parsed = ModesFile.parse(JSON.parse(readFileSync(file, 'utf8')));
    return new ModeResults(parsed, relative(process.cwd(), file) || file);
  } catch (err) {
    onLog?.(`no mode benchmark rows from ${file}: ${(err as Error).message.split('\n')[0]}`);
    return undefined;
  }
}
