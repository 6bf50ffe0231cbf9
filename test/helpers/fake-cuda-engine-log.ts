/**
 * @file Reading what `fake-cuda-engine.mjs` logged: one JSON line per request frame it received (`FAKE_ENGINE_LOG`),
 * the header as sent and the payload in base64.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type CudaExecutorOptions, createCudaExecutor } from '../../src/pipeline/cuda-executor.ts';
import type { SampleRequest } from '../../src/pipeline/executor.ts';
import { MODEL_DIR, REPO_ROOT } from './paths.ts';

/** The fake engine executable (a Node script speaking the engine's framed protocol). */
export const FAKE_CUDA_ENGINE = join(REPO_ROOT, 'test/helpers/fake-cuda-engine.mjs');

/** One request frame the fake engine received. */
export interface LoggedFrame {
  header: Record<string, unknown>;
  payload: Uint8Array;
}

/** Every frame logged to `file` so far, oldest first. */
export function readFakeEngineLog(file: string): LoggedFrame[] {
  return readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { header: Record<string, unknown>; payload: string })
    .map((l) => ({ header: l.header, payload: new Uint8Array(Buffer.from(l.payload, 'base64')) }));
}

/**
 * A CUDA executor over the fake engine (flux-tiny), its frames logged to a new file in `dir`: the executor and a
 * reader of every frame it sent so far (every engine process it started logs there: the planner's too).
 */
export async function fakeCudaExecutor(dir: string, options: Partial<CudaExecutorOptions> = {}) {
  const logFile = join(dir, `requests-${Math.random().toString(36).slice(2)}.jsonl`);
  const exec = await createCudaExecutor({
    modelDir: MODEL_DIR,
    engineBin: FAKE_CUDA_ENGINE,
    ...options,
    // The caller's environment (fake-engine switches) plus the log file.
    env: { ...(options.env ?? process.env), FAKE_ENGINE_LOG: logFile },
  });
  return { exec, frames: () => readFakeEngineLog(logFile) };
}

/** The executor tests' small text-to-image request (64x64, 2 steps; the fake engine's numbers are not a model's). */
export function fakeRequest(seed: number, extra: Partial<SampleRequest> = {}): SampleRequest {
  return { prompt: 'a red fox', height: 64, width: 64, guidanceScale: 3.5, steps: 2, seed, ...extra };
}
