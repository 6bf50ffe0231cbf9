/**
 * @file Shared pieces of the mode benchmarks: the models they run on, the machine description, and
 * `bench/results/modes.json`, the file the server's `models` query reads for the measured numbers of each mode.
 *
 * `modes.json` layout (both benchmarks merge their part into it; numbers are this machine's):
 *
 *   { "format": "fluxql-modes/1", "updatedAt": ISO date, "machine": {cpu, cores, memoryGiB, node, os},
 *     "provider": "onnxruntime-node <version> cpu",
 *     "models": { "<model name>": {
 *        "latency": { size, steps, textTokens, warmup, runs, date },
 *        "quality": { size, steps, textTokens, prompts, date },
 *        "modes": { "<mode>": {
 *           "latencyMs": mean generation ms, "latencyStdMs", "latencyMedianMs", "speedup": original / mode (means),
 *           "transformerForwardMs": median ms of one full-transformer forward,
 *           "psnr": mean dB vs original, "ssim": mean vs original,
 *           "promptAccuracy": { background, color, shape, position?, size? } (grammar models: bench/quality-grammar.ts),
 *           "promptCount": prompts judged,
 *           "plan": { "budget", "measuredError", "algorithms": { "<algorithm>": layer count } } | null,
 *           "stepCache": { "threshold", "fullSteps", "cachedSteps" } | null } } } } }
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, platform, release, totalmem } from 'node:os';
import { join } from 'node:path';
import type { EngineManifest } from '../../src/runtime/index.ts';
import { BENCH_CPU_CONFIG, writeSyntheticModel } from './synthetic-model.ts';

export const REPO = new URL('../..', import.meta.url).pathname;
export const RESULTS_DIR = join(REPO, 'bench/results');
export const MODES_FILE = join(RESULTS_DIR, 'modes.json');

/** The machine the numbers come from. */
export function machineInfo() {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    os: `${platform()} ${release()}`,
  };
}

/** The ORT version string for reports. */
export function providerInfo(): string {
  const pkg = JSON.parse(readFileSync(join(REPO, 'node_modules/onnxruntime-node/package.json'), 'utf8')) as {
    version: string;
  };
  return `onnxruntime-node ${pkg.version} cpu (float32 activations)`;
}

/** The models the benchmarks run: the embedded flux-tiny and the synthetic CPU benchmark configuration. */
export function benchModels(only?: string): { label: string; dir: string }[] {
  const out: { label: string; dir: string }[] = [];
  if (only !== 'synthetic') out.push({ label: 'flux-tiny', dir: join(REPO, 'models/flux-tiny') });
  if (only !== 'tiny') {
    const dir = join(REPO, '.cache/synthetic', BENCH_CPU_CONFIG.name);
    writeSyntheticModel(dir, BENCH_CPU_CONFIG, join(REPO, 'models/flux-tiny'));
    out.push({ label: BENCH_CPU_CONFIG.name, dir });
  }
  return out;
}

/** The plan summary of a manifest for reports (null for unplanned modes). */
export function planSummary(m: EngineManifest) {
  if (!m.planSummary) return null;
  const algorithms: Record<string, number> = {};
  for (const e of m.plan) algorithms[e.algorithm] = (algorithms[e.algorithm] ?? 0) + 1;
  return { budget: m.planSummary.budget, measuredError: m.planSummary.measuredError, algorithms };
}

type ModeRow = Record<string, unknown>;
interface ModesFile {
  format: 'fluxql-modes/1';
  updatedAt: string;
  machine: ReturnType<typeof machineInfo>;
  provider: string;
  models: Record<string, { latency?: unknown; quality?: unknown; modes: Record<string, ModeRow> }>;
}

/** Merges one benchmark's rows for `model` into modes.json (other fields and models are kept). */
export function mergeModes(
  model: string,
  section: 'latency' | 'quality',
  settings: unknown,
  rows: Record<string, ModeRow>,
): void {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file: ModesFile = existsSync(MODES_FILE)
    ? (JSON.parse(readFileSync(MODES_FILE, 'utf8')) as ModesFile)
    : { format: 'fluxql-modes/1', updatedAt: '', machine: machineInfo(), provider: providerInfo(), models: {} };
  file.updatedAt = new Date().toISOString();
  file.machine = machineInfo();
  file.provider = providerInfo();
  file.models[model] ??= { modes: {} };
  const entry = file.models[model];
  entry[section] = settings;
  for (const [mode, row] of Object.entries(rows)) entry.modes[mode] = { ...entry.modes[mode], ...row };
  writeFileSync(MODES_FILE, `${JSON.stringify(file, null, 2)}\n`);
}

/** Reads modes.json (undefined when no benchmark ran yet). */
export function readModes(): ModesFile | undefined {
  return existsSync(MODES_FILE) ? (JSON.parse(readFileSync(MODES_FILE, 'utf8')) as ModesFile) : undefined;
}

/** mean and sample standard deviation. */
export function meanStd(xs: readonly number[]): { mean: number; std: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const v = xs.length > 1 ? xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1) : 0;
  return { mean, std: Math.sqrt(v) };
}

/** Median (mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
