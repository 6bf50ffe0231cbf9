/**
 * @file The checks every executor makes of a {@link SampleRequest} before it touches an engine: the ORT pipeline
 * and the native CUDA engine client share them, so a bad request fails the same way (a `FluxArgumentError` naming
 * the field) whichever engine serves. What one engine cannot do (modes, LoRAs, sizes it lacks) it checks on top.
 */
import type { SampleRequest } from './executor.ts';
import { FluxArgumentError, type LatentGrid, latentGrid } from './flux/latents.ts';

/** Most denoising steps a sample may ask for. */
export const MAX_SAMPLE_STEPS = 1000;

/**
 * Checks the fields every engine reads and returns the sample's latent grid.
 * @param packedChannels values per packed latent token (64 for FLUX), for an explicit `latents` array
 * @param vaeScale the VAE's spatial factor (8 for FLUX)
 * @throws FluxArgumentError / InvalidSizeError naming the first bad field
 */
export function checkSampleRequest(r: SampleRequest, packedChannels: number, vaeScale = 8): LatentGrid {
  if (typeof r.prompt !== 'string') throw new FluxArgumentError('prompt', 'must be a string');
  if (r.prompt2 !== undefined && typeof r.prompt2 !== 'string') {
    throw new FluxArgumentError('prompt2', 'must be a string');
  }
  if (!Number.isInteger(r.steps) || r.steps < 1 || r.steps > MAX_SAMPLE_STEPS) {
    throw new FluxArgumentError('steps', `must be an integer in 1..${MAX_SAMPLE_STEPS}, got ${r.steps}`);
  }
  if (!Number.isFinite(r.guidanceScale)) {
    throw new FluxArgumentError('guidanceScale', `must be finite, got ${r.guidanceScale}`);
  }
  if (!Number.isSafeInteger(r.seed)) throw new FluxArgumentError('seed', `must be a safe integer, got ${r.seed}`);
  const grid = latentGrid(r.height, r.width, vaeScale);
  if (r.latents && r.latents.length !== grid.seqLen * packedChannels) {
    throw new FluxArgumentError(
      'latents',
      `expected ${grid.seqLen * packedChannels} values ([L, C] packed), got ${r.latents.length}`,
    );
  }
  return grid;
}

/** Throws unless `mode` (absent: the default) is one of the `modes` an executor runs. */
export function checkMode(mode: string | undefined, modes: readonly string[]): void {
  if (mode !== undefined && !modes.includes(mode)) {
    throw new FluxArgumentError('mode', `unknown mode "${mode}"; this model has: ${modes.join(', ')}`);
  }
}
