/**
 * @file Per-model calibration of the S engine's step-cache threshold, run once when an S engine is first loaded and
 * cached beside it (`<cacheDir>/plans/<engine folder>-stepcache.json`).
 *
 * Why calibrate: how much the first block's residual moves between steps depends on the model. On FLUX.1-dev it
 * moves little in mid-trajectory, which is what First-Block-Cache exploits; on the random-weight synthetic benchmark
 * model it moves 63-70 % every step (measured), so any fixed threshold is either never met there or reckless on
 * real weights. The criterion that matters is the image: the largest candidate threshold whose images stay within
 * `minPsnr` dB of the same engine run without skipping (calibration prompts and size of `elastic-plan.ts`) wins
 * (`step-cache-threshold.ts`, the search the CUDA modes use too).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Engine } from '../../runtime/index.ts';
import { CALIBRATION } from './elastic-plan.ts';
import { type StepCache, stepCacheOf } from './step-cache.ts';
import { largestPassingThreshold, type ThresholdTrial, worstPsnr } from './step-cache-threshold.ts';

/** Thresholds tried, ascending (relative L1 change of the first-block residual). */
export const THRESHOLD_CANDIDATES = [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2] as const;

/** What calibration needs from the pipeline. */
export interface ImageSource {
  generate(opts: {
    prompt: string;
    height: number;
    width: number;
    steps: number;
    seed: number;
    maxSequenceLength: number;
    mode: string;
  }): Promise<{ floatImages: Float32Array[] }>;
}

interface CalibrationFile {
  threshold: number;
  minPsnr: number;
  /** Worst PSNR over the calibration prompts for each candidate tried. */
  tried: ThresholdTrial[];
}

async function imagesWith(
  pipe: ImageSource,
  cache: StepCache,
  mode: string,
  threshold: number,
): Promise<Float32Array[]> {
  cache.settings = { ...cache.settings, threshold };
  const out: Float32Array[] = [];
  for (const [i, prompt] of CALIBRATION.prompts.entries()) {
    const r = await pipe.generate({
      prompt,
      height: CALIBRATION.size,
      width: CALIBRATION.size,
      steps: CALIBRATION.steps,
      seed: 2000 + i,
      maxSequenceLength: CALIBRATION.textTokens,
      mode,
    });
    out.push(r.floatImages[0]!);
  }
  return out;
}

/**
 * Sets the calibrated threshold on the engine's step cache (computing it on first use); no-op for engines without
 * step caching. Threshold 0 (never skip) results when no candidate keeps the images within `minPsnr`.
 */
export async function calibrateStepCache(
  pipe: ImageSource,
  engine: Engine,
  mode: string,
  cacheDir: string,
): Promise<void> {
  const cache = stepCacheOf(engine);
  const sc = engine.manifest.stepCache;
  if (!cache || !sc) return;
  const minPsnr = sc.minPsnr ?? 30;
  const path = join(cacheDir, 'plans', `${basename(dirname(engine.manifestPath))}-stepcache.json`);
  if (existsSync(path)) {
    const file = JSON.parse(readFileSync(path, 'utf8')) as CalibrationFile;
    if (file.minPsnr === minPsnr) {
      cache.settings = { ...cache.settings, threshold: file.threshold };
      return;
    }
  }
  const reference = await imagesWith(pipe, cache, mode, 0);
  const { threshold, tried } = await largestPassingThreshold(THRESHOLD_CANDIDATES, minPsnr, async (candidate) =>
    worstPsnr(await imagesWith(pipe, cache, mode, candidate), reference),
  );
  cache.settings = { ...cache.settings, threshold };
  cache.stats.full = 0;
  cache.stats.cached = 0;
  mkdirSync(dirname(path), { recursive: true });
  const file: CalibrationFile = { threshold, minPsnr, tried };
  writeFileSync(path, `${JSON.stringify(file, null, 2)}\n`);
}
