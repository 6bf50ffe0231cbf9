/**
 * @file FluxPipeline: FLUX.1 text-to-image (and img2img, inpainting, true CFG: edit.ts) on compiled ONNX engines, reproducing diffusers' FluxPipeline. The public
 * entry of the pipeline layer: `fromPretrained`, `generate`, and the step API `prepare` / `step` / `decode` the
 * scheduler interleaves requests with. The work lives in files named for it:
 *   engine-registry.ts   — engines by mode and variant, planned, compiled and loaded once;
 *   lora-engines.ts      — LoRA sets on LoRA engines, control-capable engines and their VAE encoder;
 *   step-api.ts          — prepare / step / decode;
 *   conformance-entry.ts — a raw transformer forward and the sigma schedule, for conformance and benchmarks.
 */
import {
  type Engine,
  EngineLoader,
  type EngineManifest,
  type ExecutionProvider,
  type HostTensor,
  type Session,
  type SessionOptions,
} from '../../runtime/index.ts';
import type { ModeSpec } from '../../shared/vocabulary/index.ts';
import { REFERENCE_MODE } from '../../shared/vocabulary/index.ts';
import type { RgbImage, SampleRequest } from '../executor.ts';
import { floatImageToRgb } from '../image.ts';
import type { LoraManager } from '../lora/lora-manager.ts';
import type { LoraSelection } from '../lora/types.ts';
import type { EngineCompilerPort } from './compiler-port.ts';
import { forwardTransformer, scheduleFor, type TransformerInputs } from './conformance-entry.ts';
import { ensurePlan } from './elastic-plan.ts';
import { defaultCacheDir, type ModelSource, openModelSource } from './engine-cache.ts';
import { EngineRegistry, type EngineVariant } from './engine-registry.ts';
import { FluxArgumentError, latentGrid } from './latents.ts';
import { LoraEngines } from './lora-engines.ts';
import { isFinished, type SampleState } from './sample-state.ts';
import type { FlowMatchConfig } from './schedule.ts';
import { FluxSteps, SAMPLE_DEFAULTS } from './step-api.ts';
import { calibrateStepCache } from './step-cache-calibration.ts';
import { type FluxTokenizers, loadFluxTokenizers } from './tokenize.ts';

/** Options of {@link FluxPipeline.fromPretrained}. */
export interface FluxPipelineOptions {
  /** Builds the engines (`engineCompiler` of `engines/compiler/port.ts`, passed in by the composition root). */
  compiler: EngineCompilerPort;
  /** ORT execution provider. @default 'cpu' */
  provider?: ExecutionProvider;
  /** ORT intra-op threads. */
  threads?: number;
  /** Where compiled engines are cached (CACHE_DIR in `config.ts`). @default `<repo>/.cache/engines` */
  cacheDir?: string;
  /** Modes to load up front. @default [REFERENCE_MODE] */
  modes?: string[];
  /** Reports compile progress (first load only). */
  onLog?: (message: string) => void;
  /** The only folder LoRA files are read from (LORA_DIR in `config.ts`). Absent: every LoRA is `not_found`. */
  loraDir?: string;
  /** ORT intra-op threads spin-wait between runs (FLUXQL_ORT_SPIN in `config.ts`). @default false */
  ortSpin?: boolean;
}

/** Arguments of {@link FluxPipeline.generate}. */
export interface GenerateOptions {
  prompt?: string;
  prompts?: string[];
  prompt2?: string | string[];
  height?: number;
  width?: number;
  steps?: number;
  guidanceScale?: number;
  /** One seed for the batch (sample i uses seed + i) or one per prompt. */
  seed?: number | number[];
  /** Explicit packed starting noise `[B, L, 64]`. */
  latents?: Float32Array;
  maxSequenceLength?: number;
  mode?: string;
  /** LoRA set of every sample (see {@link SampleRequest.loras}). */
  loras?: SampleRequest['loras'];
  /** Control image of every sample, for a BFL Control LoRA in `loras` (see {@link SampleRequest.controlImage}). */
  controlImage?: RgbImage;
  /** img2img / inpainting input image: one for every sample, or one per prompt (see {@link SampleRequest.image}). */
  image?: RgbImage | RgbImage[];
  /** Inpainting mask (white = repaint): one for every sample, or one per prompt. */
  mask?: RgbImage | RgbImage[];
  /** Share of the schedule run on the input image, 0-1. @default 0.6 */
  strength?: number;
  /** True CFG negative prompt: one for every sample, or one per prompt. */
  negativePrompt?: string | string[];
  /** True CFG scale; > 1 with a negative prompt runs the negative branch. */
  trueCfgScale?: number;
  /**
   * `'shared'`: one torch generator seeded with `seed` draws for the whole batch, as diffusers' single `generator=`
   * (`seed` must then be one number). @default 'per-sample' (sample i: its own generator, seed + i)
   */
  generator?: 'per-sample' | 'shared';
  /** Called after each step with the batch's packed latents. */
  onStep?: (step: number, totalSteps: number, latents: Float32Array[]) => void;
  /** Called as each phase starts: text encoding, the denoising loop, VAE decoding. */
  onPhase?: (phase: 'encode' | 'denoise' | 'decode') => void;
}

/** What {@link FluxPipeline.generate} returns. */
export interface GenerateResult {
  images: RgbImage[];
  /** Decoded images in [0,1], `[3, H, W]` each (before 8-bit quantisation). */
  floatImages: Float32Array[];
  /** Final packed latents per sample. */
  latents: Float32Array[];
}

/** See the file header. */
export class FluxPipeline {
  private constructor(
    readonly source: ModelSource,
    readonly compiler: EngineCompilerPort,
    readonly tokenizers: FluxTokenizers,
    readonly scheduler: FlowMatchConfig,
    private readonly engines: EngineRegistry,
    private readonly loraEngines: LoraEngines,
    private readonly steps: FluxSteps,
  ) {}

  /** Loads tokenizers and scheduler config, compiles (or reuses cached) engines and opens their sessions. */
  static async fromPretrained(modelPath: string, options: FluxPipelineOptions): Promise<FluxPipeline> {
    const source = openModelSource(modelPath);
    const tokenizers = await loadFluxTokenizers(source.tokenizerPaths);
    const sessionOptions: SessionOptions = {
      provider: options.provider ?? 'cpu',
      threads: options.threads,
      spin: options.ortSpin ?? false,
    };
    const cacheDir = options.cacheDir ?? defaultCacheDir();
    // Planning and step-cache calibration run this very pipeline, which exists once the registry does.
    let pipe: FluxPipeline | undefined;
    const engines = new EngineRegistry(source, new EngineLoader(sessionOptions), options, {
      plan: (spec: ModeSpec) => ensurePlan(pipe!, spec, cacheDir, { threads: options.threads, onLog: options.onLog }),
      calibrate: (engine: Engine, mode: string) => calibrateStepCache(pipe!, engine, mode, cacheDir),
    });
    const loraEngines = new LoraEngines(source, engines, options.loraDir);
    const steps = new FluxSteps(tokenizers, source.scheduler, engines, loraEngines);
    pipe = new FluxPipeline(source, options.compiler, tokenizers, source.scheduler, engines, loraEngines, steps);
    for (const mode of options.modes ?? [REFERENCE_MODE]) await pipe.engine(mode);
    return pipe;
  }

  /** Number of ORT sessions created so far. */
  get sessionsCreated(): number {
    return this.engines.sessionsCreated;
  }

  /** The loaded (or loading) engine of `mode` and variant (see {@link EngineRegistry.engine}). */
  engine(mode = REFERENCE_MODE, variant: EngineVariant = {}): Promise<Engine> {
    return this.engines.engine(mode, variant);
  }

  /** Manifest of a loaded mode. */
  manifest(mode = REFERENCE_MODE): Promise<EngineManifest> {
    return this.engines.manifest(mode);
  }

  /** The LoRA set manager (files from `loraDir` / LORA_DIR, default set, feeds). */
  get loras(): LoraManager {
    return this.loraEngines.loras;
  }

  /** The LoRA engine of `mode` and the feeds of `set` on it (see {@link LoraEngines.feeds}). @throws LoraError */
  loraFeeds(
    mode: string,
    set: readonly LoraSelection[],
    controlChannels?: number,
  ): Promise<{ engine: Engine; feeds: Record<string, HostTensor> }> {
    return this.loraEngines.feeds(mode, set, controlChannels);
  }

  /** Extra input channels `set` needs: 64 with a BFL Control LoRA in it, else 0. @throws LoraError */
  controlChannelsFor(set: readonly LoraSelection[]): number {
    return this.loraEngines.controlChannelsFor(set);
  }

  /** The VAE encoder of `mode`'s control engine. */
  controlEncoder(mode: string, controlChannels: number): Promise<Session> {
    return this.loraEngines.controlEncoder(mode, controlChannels);
  }

  /** CLIP pooled `[B, P]` and T5 `[B, T, D]` embeddings of a batch of prompts, per sample (see {@link FluxSteps}). */
  encodePrompts(...args: Parameters<FluxSteps['encodePrompts']>): ReturnType<FluxSteps['encodePrompts']> {
    return this.steps.encodePrompts(...args);
  }

  /** One raw transformer forward (conformance, benchmarks; see {@link forwardTransformer}). */
  forwardTransformer(input: TransformerInputs, mode = REFERENCE_MODE, loras: readonly LoraSelection[] = []) {
    return forwardTransformer(this.engines, this.loraEngines, input, mode, loras);
  }

  /** The sigma schedule a `steps` × `height`×`width` request gets (conformance, previews). */
  prepareScheduleOnly(steps: number, height: number, width: number) {
    return scheduleFor(this.engines, this.scheduler, steps, height, width);
  }

  /** Validates requests, encodes their prompts (one batched run) and draws their starting noise. */
  prepare(requests: SampleRequest[]): Promise<SampleState[]> {
    return this.steps.prepare(requests);
  }

  /** One Euler step for every unfinished sample, one transformer run per compatible group. */
  step(samples: SampleState[]): Promise<void> {
    return this.steps.step(samples);
  }

  /** The full transformer graph's feeds for one step of `group` (one grid and text length) in `mode`. */
  transformerFeeds(group: SampleState[], mode = REFERENCE_MODE): Promise<Record<string, HostTensor>> {
    return this.steps.transformerFeeds(group, mode);
  }

  /** Decodes finished samples; returns `[3, H, W]` float images in [0,1], in input order. */
  decode(samples: SampleState[]): Promise<Float32Array[]> {
    return this.steps.decode(samples);
  }

  /** Text-to-image in one call (see {@link GenerateOptions}). */
  async generate(opts: GenerateOptions): Promise<GenerateResult> {
    const prompts = opts.prompts ?? (opts.prompt !== undefined ? [opts.prompt] : []);
    if (prompts.length === 0) throw new FluxArgumentError('prompt', 'give a prompt or a non-empty prompts list');
    const prompts2 = Array.isArray(opts.prompt2)
      ? opts.prompt2
      : prompts.map((p) => (opts.prompt2 as string | undefined) ?? p);
    if (prompts2.length !== prompts.length) throw new FluxArgumentError('prompt2', 'needs one entry per prompt');
    const height = opts.height ?? SAMPLE_DEFAULTS.height;
    const width = opts.width ?? SAMPLE_DEFAULTS.width;
    const seed = opts.seed;
    const seeds = Array.isArray(seed) ? seed : prompts.map((_, i) => (seed ?? 0) + i);
    if (seeds.length !== prompts.length) throw new FluxArgumentError('seed', 'needs one seed per prompt');
    const shared = opts.generator === 'shared';
    if (shared && Array.isArray(seed)) throw new FluxArgumentError('seed', "one seed with generator 'shared'");
    const perPrompt = <T>(v: T | T[] | undefined, field: string): (T | undefined)[] => {
      if (!Array.isArray(v)) return prompts.map(() => v);
      if (v.length !== prompts.length) throw new FluxArgumentError(field, 'needs one entry per prompt');
      return v;
    };
    const images = perPrompt(opts.image, 'image');
    const masks = perPrompt(opts.mask, 'mask');
    const negatives = perPrompt(opts.negativePrompt, 'negativePrompt');
    latentGrid(height, width); // a bad size fails before any engine loads
    const perSample = opts.latents ? opts.latents.length / prompts.length : 0;
    if (opts.latents && !Number.isInteger(perSample))
      throw new FluxArgumentError('latents', 'length is not a multiple of the batch');
    opts.onPhase?.('encode');
    const states = await this.prepare(
      prompts.map((prompt, i) => ({
        prompt,
        prompt2: prompts2[i],
        height,
        width,
        steps: opts.steps ?? SAMPLE_DEFAULTS.steps,
        guidanceScale: opts.guidanceScale ?? SAMPLE_DEFAULTS.guidanceScale,
        seed: shared ? ((seed as number | undefined) ?? 0) : seeds[i]!,
        ...(shared ? { sharedGenerator: { index: i, batch: prompts.length } } : {}),
        ...(images[i] !== undefined ? { image: images[i] } : {}),
        ...(masks[i] !== undefined ? { mask: masks[i] } : {}),
        ...(opts.strength !== undefined ? { strength: opts.strength } : {}),
        ...(negatives[i] !== undefined ? { negativePrompt: negatives[i] } : {}),
        ...(opts.trueCfgScale !== undefined ? { trueCfgScale: opts.trueCfgScale } : {}),
        ...(opts.maxSequenceLength !== undefined ? { maxSequenceLength: opts.maxSequenceLength } : {}),
        latents: opts.latents?.slice(i * perSample, (i + 1) * perSample),
        mode: opts.mode,
        ...(opts.loras !== undefined ? { loras: opts.loras } : {}),
        ...(opts.controlImage !== undefined ? { controlImage: opts.controlImage } : {}),
      })),
    );
    const total = states[0]!.sigmas.length - 1;
    opts.onPhase?.('denoise');
    while (!states.every(isFinished)) {
      await this.step(states);
      opts.onStep?.(
        states[0]!.step,
        total,
        states.map((s) => s.latents),
      );
    }
    opts.onPhase?.('decode');
    const floatImages = await this.decode(states);
    return {
      floatImages,
      images: floatImages.map((im) => floatImageToRgb(im, 0, height, width)),
      latents: states.map((s) => s.latents),
    };
  }

  /** Releases every ORT session. */
  async close(): Promise<void> {
    await this.engines.close();
  }
}
