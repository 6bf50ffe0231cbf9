/**
 * @file The in-thread {@link StepExecutor} over a {@link FluxPipeline}: keeps each prepared sample's state under an
 * opaque handle. `worker-executor.ts` hosts one of these in a worker thread for the server.
 */
import type { ModelInfo, RgbImage, SampleHandle, SampleRequest, StepExecutor, StepResult } from '../executor.ts';
import { floatImageToRgb } from '../image.ts';
import { FluxArgumentError } from './latents.ts';
import { FluxPipeline, type FluxPipelineOptions } from './pipeline.ts';
import { latentPreviewRgb } from './preview.ts';
import type { SampleState } from './sample-state.ts';

/** Options of {@link createInThreadExecutor}. */
export interface FluxExecutorOptions extends FluxPipelineOptions {
  /** Model repository (diffusers folder or BFL files). */
  modelDir: string;
  /** Largest batch per step. @default 4 */
  maxBatch?: number;
}

/** A handle that is not (or no longer) known to the executor. */
export class UnknownHandleError extends Error {
  constructor(readonly handle: string) {
    super(`unknown sample handle ${handle}`);
    this.name = 'UnknownHandleError';
  }
}

/** Loads the pipeline and wraps it; see the file header. */
export async function createInThreadExecutor(
  options: FluxExecutorOptions,
): Promise<StepExecutor & { pipeline: FluxPipeline }> {
  const pipeline = await FluxPipeline.fromPretrained(options.modelDir, options);
  const manifest = await pipeline.manifest('original');
  const info: ModelInfo = {
    name: pipeline.source.name,
    path: pipeline.source.path,
    modes: pipeline.source.modes,
    device: options.provider ?? 'cpu',
    packedChannels: manifest.config.inChannels,
    pixelsPerToken: manifest.config.vaeScaleFactor * 2,
    maxBatch: options.maxBatch ?? 4,
  };
  const states = new Map<SampleHandle, SampleState>();
  const get = (h: SampleHandle): SampleState => {
    const s = states.get(h);
    if (!s) throw new UnknownHandleError(h);
    return s;
  };

  return {
    pipeline,
    info: () => info,
    async prepare(requests: SampleRequest[]): Promise<SampleHandle[]> {
      for (const r of requests) {
        if (r.mode && !info.modes.includes(r.mode)) {
          throw new FluxArgumentError('mode', `unknown mode "${r.mode}"; this model has: ${info.modes.join(', ')}`);
        }
      }
      const prepared = await pipeline.prepare(requests);
      for (const s of prepared) states.set(s.id, s);
      return prepared.map((s) => s.id);
    },
    async step(handles, options): Promise<(StepResult & { preview?: RgbImage })[]> {
      const samples = handles.map(get);
      await pipeline.step(samples);
      return samples.map((s) => ({
        handle: s.id,
        step: s.step,
        totalSteps: s.sigmas.length - 1,
        ...(options?.preview ? { preview: latentPreviewRgb(s.latents, s.grid.h, s.grid.w) } : {}),
      }));
    },
    async decode(handles): Promise<RgbImage[]> {
      const samples = handles.map(get);
      const images = await pipeline.decode(samples);
      return images.map((im, i) => floatImageToRgb(im, 0, samples[i]!.request.height, samples[i]!.request.width));
    },
    async release(handles): Promise<void> {
      for (const h of handles) states.delete(h);
    },
    async close(): Promise<void> {
      states.clear();
      await pipeline.close();
    },
  };
}
