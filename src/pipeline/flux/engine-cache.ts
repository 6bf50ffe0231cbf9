/**
 * @file Where the pipeline finds its compiled engines: resolves the model repository once, then asks the engine
 * compiler (through its port, `compiler-port.ts`) for the manifest of a mode (built on first use, cached on disk
 * across restarts).
 */
import { resolve } from 'node:path';
import { hubRepoOfSnapshot } from '../../shared/hub/index.ts';
import { PACKAGE_ROOT } from '../../shared/package-root.ts';
import { MODE_NAMES } from '../../shared/vocabulary/modes.ts';
import type { ModePlan } from '../../shared/vocabulary/plan-types.ts';
import { type ModelRepo, resolveModelRepo } from '../../shared/weights/index.ts';
import type { EngineCompilerPort } from './compiler-port.ts';
import { type FlowMatchConfig, parseSchedulerConfig } from './schedule.ts';
import type { FluxTokenizerPaths } from './tokenize.ts';

/** A resolved model with what the pipeline needs besides engines. */
export interface ModelSource {
  /** Display name (the repository folder's name). */
  name: string;
  /** Absolute path the model was loaded from. */
  path: string;
  repo: ModelRepo;
  tokenizerPaths: FluxTokenizerPaths;
  scheduler: FlowMatchConfig;
  /** Modes that can be compiled for this model. */
  modes: string[];
}

/** Repository root of fluxql (for the default cache location). */
const PROJECT_ROOT = PACKAGE_ROOT;

/** The engine cache folder when none is given: `<project>/.cache/engines` (CACHE_DIR is read by `config.ts`). */
export function defaultCacheDir(): string {
  return resolve(PROJECT_ROOT, '.cache/engines');
}

/** Resolves a model path (diffusers folder, BFL folder or BFL transformer file). */
export function openModelSource(path: string): ModelSource {
  const repo = resolveModelRepo(path);
  return {
    // A hub cache snapshot is named by its repo id, not by its commit-hash folder.
    name: hubRepoOfSnapshot(repo.root) ?? repo.root.split(/[\\/]/).filter(Boolean).pop() ?? repo.root,
    path: repo.root,
    repo,
    tokenizerPaths: { clip: repo.tokenizerDir, t5: repo.tokenizer2Dir },
    scheduler: parseSchedulerConfig(repo.schedulerConfig, `${repo.schedulerDir}/scheduler_config.json`),
    modes: [...MODE_NAMES],
  };
}

/** Manifest path of `mode`, compiling it when not cached. */
export async function ensureEngine(
  compiler: EngineCompilerPort,
  source: ModelSource,
  options: {
    mode: string;
    cacheDir?: string;
    onLog?: (m: string) => void;
    lora?: boolean;
    /** With `lora`: the control-capable variant (widened input + VAE encoder), see `CompileOptions`. */
    controlChannels?: number;
    plan?: ModePlan;
  },
): Promise<string> {
  return compiler.compileEngine(source.repo, {
    mode: options.mode,
    cacheDir: options.cacheDir ?? defaultCacheDir(),
    onLog: options.onLog,
    lora: options.lora,
    controlChannels: options.controlChannels,
    plan: options.plan,
  });
}

/** The VAE encoder's ONNX file (img2img and inpainting), compiling it when not cached. */
export async function ensureVaeEncoder(
  compiler: EngineCompilerPort,
  source: ModelSource,
  options: { cacheDir?: string; onLog?: (m: string) => void },
): Promise<string> {
  return compiler.compileVaeEncoder(source.repo, {
    cacheDir: options.cacheDir ?? defaultCacheDir(),
    onLog: options.onLog,
  });
}
