/**
 * @file The in-thread {@link StepExecutor} over a {@link FluxPipeline}: keeps each prepared sample's state under an
 * opaque handle. `engine-process/host.ts` hosts one of these in the server's engine child process.
 */
import {
  type ModelInfo,
  type PlanLayer,
  type RgbImage,
  type SampleHandle,
  type SampleRequest,
  type StepExecutor,
  type StepResult,
  UnknownHandleError,
} from '../executor.ts';
import { floatImageToRgb } from '../image.ts';
import type { LoraInfo, LoraSelection } from '../lora/index.ts';
import { checkMode } from '../sample-checks.ts';
import { cachedPlans } from './elastic-plan.ts';
import { defaultCacheDir } from './engine-cache.ts';
import { FluxPipeline, type FluxPipelineOptions } from './pipeline.ts';
import { latentPreviewRgb } from './preview.ts';
import type { SampleState } from './sample-state.ts';

/**
 * Largest side the ORT pipeline declares: its attention is query-chunked, but the transformer's and VAE's work
 * still grows with the pixel count. The service's own limit (1280 by default) applies as well.
 */
const MAX_SIDE = 2048;

/** Options of {@link createInThreadExecutor}. */
export interface FluxExecutorOptions extends FluxPipelineOptions {
  /** Model repository (diffusers folder or BFL files). */
  modelDir: string;
  /** Largest batch per step. @default 4 */
  maxBatch?: number;
}

export { UnknownHandleError } from '../executor.ts';

/** Loads the pipeline and wraps it; see the file header. */
export async function createInThreadExecutor(
  options: FluxExecutorOptions,
): Promise<StepExecutor & { pipeline: FluxPipeline }> {
  const pipeline = await FluxPipeline.fromPretrained(options.modelDir, options);
  const manifest = await pipeline.manifest('original');
  const info: ModelInfo = {
    name: pipeline.source.name,
    path: pipeline.source.path,
    capabilities: {
      modes: pipeline.source.modes,
      lora: true,
      control: true,
      edit: true,
      maxSide: MAX_SIDE,
      maxBatch: options.maxBatch ?? 4,
    },
    device: options.provider ?? 'cpu',
    engine: 'onnx',
    packedChannels: manifest.config.inChannels,
    pixelsPerToken: manifest.config.vaeScaleFactor * 2,
  };
  const modes = info.capabilities.modes;
  // The mode a default-set change is checked on: the first one loaded at start.
  const loraCheckMode = options.modes?.[0] ?? 'original';
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
      for (const r of requests) checkMode(r.mode || undefined, modes);
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
    loraAdmin: {
      loras: async () => pipeline.loras.scan(),
      async checkLoras(set, mode = loraCheckMode): Promise<LoraInfo[]> {
        checkMode(mode, modes);
        const infos = set.map((s) => pipeline.loras.info(s.name));
        // Builds (and caches) the set's feeds on the mode's LoRA engine: strengths, duplicates, engine support.
        await pipeline.loraFeeds(
          mode,
          set.map((s, i) => ({ name: infos[i]!.name, strength: s.strength })),
        );
        return infos;
      },
      async loadLora(name, strength): Promise<LoraInfo> {
        const manager = pipeline.loras;
        const lora = manager.info(name);
        // Check the default set as it would become (e.g. two control LoRAs replacing one norm) before changing it.
        const current = manager.activeSet();
        const next: LoraSelection[] = current.some((s) => s.name === lora.name)
          ? current.map((s) => (s.name === lora.name ? { name: s.name, strength } : s))
          : [...current, { name: lora.name, strength }];
        await pipeline.loraFeeds(loraCheckMode, next);
        return manager.load(lora.name, strength);
      },
      unloadLora: async (name) => pipeline.loras.unload(name),
      activeLoras: async () => pipeline.loras.activeSet(),
    },
    stats: async () => ({ sessionsCreated: pipeline.sessionsCreated }),
    async warm(mode: string): Promise<void> {
      checkMode(mode, modes);
      await pipeline.engine(mode);
    },
    // Reads the plan cache (what the planned modes' engines are compiled from); never plans or compiles.
    async modePlans(): Promise<Record<string, PlanLayer[]>> {
      const plans = cachedPlans(pipeline, options.cacheDir ?? defaultCacheDir());
      return Object.fromEntries(
        Object.entries(plans)
          .filter(([mode]) => modes.includes(mode))
          .map(([mode, plan]) => [
            mode,
            plan.entries.map((e) => ({ layer: e.layer, algorithm: e.algorithm, error: e.error, gainMs: e.gainMs })),
          ]),
      );
    },
  };
}
