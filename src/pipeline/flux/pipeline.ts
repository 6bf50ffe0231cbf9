/**
 * @file FluxPipeline: FLUX.1 text-to-image on compiled ONNX engines, reproducing diffusers' FluxPipeline.
 *
 * The work is split at step granularity so the scheduler can interleave requests:
 *   prepare  — tokenize (CLIP 77, T5 maxSequenceLength), encode (CLIP pooled, T5 hidden states), seeded noise,
 *              sigma schedule with the dynamic shift of the image token count;
 *   step     — one transformer forward + Euler update for a set of samples, batched per compatible shape;
 *   decode   — unpack, VAE scaling/shift, VAE decoder, [0,1] postprocess.
 * `generate` chains them for one call. Everything runs on the caller's thread; `executor.ts` hosts it in a worker.
 */
import { randomUUID } from 'node:crypto';
import type { EngineManifest, HostTensor, Session, SessionOptions } from '../../runtime/index.ts';
import { type Engine, EngineLoader, type ExecutionProvider } from '../../runtime/index.ts';
import type { LoraEngineLayout } from '../../shared/vocabulary/lora-layout.ts';
import { resolveModeFor } from '../../shared/vocabulary/modes.ts';
import { type FluxTransformerConfig, resolveTransformerConfig } from '../../shared/vocabulary/transformer-config.ts';
import type { RgbImage, SampleRequest } from '../executor.ts';
import { floatImageToRgb } from '../image.ts';
import { createLoraManager, readLoraLayout } from '../lora/engine-layout.ts';
import type { LoraManager } from '../lora/lora-manager.ts';
import type { LoraSelection } from '../lora/types.ts';
import {
  checkControlRequest,
  concatFeatures,
  controlChannelsOf,
  prepareControlSample,
  vaeEncoderPath,
} from './control.ts';
import { ensurePlan } from './elastic-plan.ts';
import { defaultCacheDir, ensureEngine, type ModelSource, openModelSource } from './engine-cache.ts';
import { FluxArgumentError, imageIds, latentGrid, packLatents, textIds } from './latents.ts';
import { noiseForSeeds } from './noise.ts';
import { concatIds, type RopeTables, ropeTables } from './rope.ts';
import { decodeGroupKey, groupBy, isFinished, type SampleState, stack, stepGroupKey } from './sample-state.ts';
import { eulerStep, type FlowMatchConfig, fluxSigmas, modelTimestep } from './schedule.ts';
import { stepCacheOf } from './step-cache.ts';
import { calibrateStepCache } from './step-cache-calibration.ts';
import { type FluxTokenizers, loadFluxTokenizers } from './tokenize.ts';
import { latentsForDecode, postprocessDecoded } from './vae-scaling.ts';

/** Options of {@link FluxPipeline.fromPretrained}. */
export interface FluxPipelineOptions {
  /** ORT execution provider. @default 'cpu' */
  provider?: ExecutionProvider;
  /** ORT intra-op threads. */
  threads?: number;
  /** Where compiled engines are cached (CACHE_DIR in `config.ts`). @default `<repo>/.cache/engines` */
  cacheDir?: string;
  /** Modes to load up front. @default ['original'] */
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

const DEFAULTS = { height: 1024, width: 1024, steps: 28, guidanceScale: 3.5, maxSequenceLength: 512 } as const;

/** See the file header. */
export class FluxPipeline {
  private readonly engines = new Map<string, Promise<Engine>>();
  private readonly ropeCache = new Map<string, RopeTables>();
  private loraManager: LoraManager | undefined;
  private readonly loraLayouts = new Map<string, LoraEngineLayout>();

  private constructor(
    readonly source: ModelSource,
    readonly tokenizers: FluxTokenizers,
    readonly scheduler: FlowMatchConfig,
    private readonly loader: EngineLoader,
    private readonly options: FluxPipelineOptions,
  ) {}

  /** Loads tokenizers and scheduler config, compiles (or reuses cached) engines and opens their sessions. */
  static async fromPretrained(modelPath: string, options: FluxPipelineOptions = {}): Promise<FluxPipeline> {
    const source = openModelSource(modelPath);
    const tokenizers = await loadFluxTokenizers(source.tokenizerPaths);
    const sessionOptions: SessionOptions = {
      provider: options.provider ?? 'cpu',
      threads: options.threads,
      spin: options.ortSpin ?? false,
    };
    const pipe = new FluxPipeline(source, tokenizers, source.scheduler, new EngineLoader(sessionOptions), options);
    for (const mode of options.modes ?? ['original']) await pipe.engine(mode);
    return pipe;
  }

  /** Number of ORT sessions created so far. */
  get sessionsCreated(): number {
    return this.loader.sessionsCreated;
  }

  /**
   * The loaded (or loading) engine of `mode`; compiles it on first use. `lora: true` gives the mode's LoRA-enabled
   * variant (a separate engine, used only while a LoRA set is non-empty; encoders and VAE sessions are shared);
   * `controlChannels` with it the control-capable one (widened input, plus the VAE encoder; BFL Control LoRAs).
   */
  engine(mode = 'original', variant: { lora?: boolean; controlChannels?: number } = {}): Promise<Engine> {
    const control = variant.lora ? (variant.controlChannels ?? 0) : 0;
    const key = variant.lora ? `${mode}+lora${control ? `+control${control}` : ''}` : mode;
    let e = this.engines.get(key);
    if (!e) {
      // Compressed modes (L, M, S) are compiled from a per-layer plan, measured once per model (elastic-plan.ts).
      e = Promise.resolve()
        .then(() => resolveModeFor(mode, this.source.name, this.source.modes))
        .then((spec) =>
          ensurePlan(this, spec, this.options.cacheDir ?? defaultCacheDir(), {
            threads: this.options.threads,
            onLog: this.options.onLog,
          }),
        )
        .then((plan) =>
          ensureEngine(this.source, {
            mode,
            cacheDir: this.options.cacheDir,
            onLog: this.options.onLog,
            lora: variant.lora,
            controlChannels: control,
            plan,
          }),
        )
        .then((m) => this.loader.load(m))
        .then(async (engine) => {
          if (engine.manifest.stepCache && !variant.lora) {
            // Mode S: calibrate the step-cache threshold once per model; its generations run on this loaded engine.
            this.engines.set(key, Promise.resolve(engine));
            await calibrateStepCache(this, engine, mode, this.options.cacheDir ?? defaultCacheDir());
          }
          return engine;
        });
      e.catch(() => this.engines.delete(key));
      this.engines.set(key, e);
    }
    return e;
  }

  /** The LoRA set manager (files from `loraDir` / LORA_DIR, default set, feeds). */
  get loras(): LoraManager {
    this.loraManager ??= createLoraManager(this.source.repo, this.options.loraDir);
    return this.loraManager;
  }

  /**
   * The LoRA engine of `mode` and the extra transformer feeds of `set` on it (built once per set, then cached).
   * `controlChannels` picks the engine's input width; by default the set's own (the control engine when it holds a
   * BFL Control LoRA, see {@link controlChannelsFor}).
   * @throws LoraError for unknown, malformed or unsupported LoRAs.
   */
  async loraFeeds(
    mode: string,
    set: readonly LoraSelection[],
    controlChannels = this.controlChannelsFor(set),
  ): Promise<{ engine: Engine; feeds: Record<string, HostTensor> }> {
    const engine = await this.engine(mode, { lora: true, controlChannels });
    let layout = this.loraLayouts.get(engine.manifestPath);
    if (!layout) {
      layout = readLoraLayout(engine.manifestPath);
      this.loraLayouts.set(engine.manifestPath, layout);
    }
    return { engine, feeds: this.loras.feeds(layout, engine.manifestPath, set) };
  }

  /** Extra input channels `set` needs: 64 with a BFL Control LoRA in it, else 0. @throws LoraError */
  controlChannelsFor(set: readonly LoraSelection[]): number {
    if (set.length === 0) return 0;
    const base = resolveTransformerConfig(this.source.repo.components.transformer.config as FluxTransformerConfig);
    return controlChannelsOf(this.loras.resolve(set), base.inChannels);
  }

  /** The VAE encoder of `mode`'s control engine (compiled with that engine, so text-to-image never builds it). */
  async controlEncoder(mode: string, controlChannels: number): Promise<Session> {
    const engine = await this.engine(mode, { lora: true, controlChannels });
    return this.loader.component('vae_encoder', vaeEncoderPath(engine.manifestPath));
  }

  /** Manifest of a loaded mode. */
  async manifest(mode = 'original'): Promise<EngineManifest> {
    return (await this.engine(mode)).manifest;
  }

  /**
   * CLIP pooled and T5 embeddings for a batch of prompts.
   * @returns `pooled [B, P]`, `embeds [B, T, D]` as per-sample arrays.
   */
  async encodePrompts(
    prompts: string[],
    prompts2: string[],
    maxSequenceLength: number,
    mode = 'original',
  ): Promise<{ pooled: Float32Array[]; embeds: Float32Array[]; textLen: number }> {
    const { sessions } = await this.engine(mode);
    const b = prompts.length;
    const clipIds = this.tokenizers.encodeClip(prompts); // [B, 77]
    const t5Ids = this.tokenizers.encodeT5(prompts2, maxSequenceLength); // [B, T]
    const clip = await sessions.clip.run({ input_ids: { data: clipIds, dims: [b, clipIds.length / b] } });
    const t5 = await sessions.t5.run({ input_ids: { data: t5Ids, dims: [b, maxSequenceLength] } });
    return {
      pooled: splitBatch(clip.pooled!.data as Float32Array, b),
      embeds: splitBatch(t5.last_hidden_state!.data as Float32Array, b),
      textLen: maxSequenceLength,
    };
  }

  /**
   * One raw transformer forward, as diffusers' `FluxTransformer2DModel.forward` takes it (conformance and
   * benchmarks): `hidden [B, L, C]`, `encoder [B, T, D]`, `pooled [B, P]`, `timestep`/`guidance` `[B]`,
   * `txtIds [T, 3]`, `imgIds [L, 3]`. Returns `[B, L, outChannels]`.
   */
  async forwardTransformer(
    input: {
      hidden: Float32Array;
      encoder: Float32Array;
      pooled: Float32Array;
      timestep: Float32Array;
      guidance?: Float32Array;
      txtIds: Float32Array;
      imgIds: Float32Array;
    },
    mode = 'original',
    loras: readonly LoraSelection[] = [],
  ): Promise<Float32Array> {
    const b = input.timestep.length;
    const t = input.txtIds.length / 3;
    const l = input.imgIds.length / 3;
    // A `hidden` wider than the model's input carries control latents: run it on the control engine.
    const base = resolveTransformerConfig(this.source.repo.components.transformer.config as FluxTransformerConfig);
    const extra = Math.max(0, input.hidden.length / (b * l) - base.inChannels);
    const lora = loras.length > 0 ? await this.loraFeeds(mode, loras, extra) : undefined;
    const { sessions, manifest, modulation } = lora?.engine ?? (await this.engine(mode));
    const cfg = manifest.config;
    const rope = ropeTables(concatIds(input.txtIds, input.imgIds), cfg.axesDimsRope);
    const conditioning: Record<string, HostTensor> = {
      pooled_projections: { data: input.pooled, dims: [b, cfg.pooledProjectionDim] },
      timestep: { data: input.timestep, dims: [b] },
      ...(cfg.guidanceEmbeds ? { guidance: { data: input.guidance ?? new Float32Array(b).fill(3.5), dims: [b] } } : {}),
    };
    const out = await sessions.transformer.run({
      hidden_states: { data: input.hidden, dims: [b, l, cfg.inChannels] },
      encoder_hidden_states: { data: input.encoder, dims: [b, t, cfg.jointAttentionDim] },
      // XL: the modulation component turns the conditioning into the transformer's `modulation` input [B, M].
      ...(modulation ? { modulation: (await modulation.run(conditioning)).modulation! } : conditioning),
      rope_cos: { data: rope.cos, dims: [rope.seqLen, rope.dim] },
      rope_sin: { data: rope.sin, dims: [rope.seqLen, rope.dim] },
      ...lora?.feeds,
    });
    return out.sample!.data as Float32Array;
  }

  /** The sigma schedule a `steps` × `height`×`width` request gets (conformance, previews). */
  async prepareScheduleOnly(
    steps: number,
    height: number,
    width: number,
  ): Promise<{ sigmas: Float32Array; timesteps: Float32Array }> {
    const manifest = await this.manifest();
    const grid = latentGrid(height, width, manifest.config.vaeScaleFactor);
    return fluxSigmas(steps, grid.seqLen, this.scheduler);
  }

  /** Validates requests, encodes their prompts (one batched run) and draws their starting noise. */
  async prepare(requests: SampleRequest[]): Promise<SampleState[]> {
    if (requests.length === 0) return [];
    // Requests without `loras` take the default set as it is now; the LoRA engine is loaded here, not mid-step.
    const defaults = this.loraManager?.activeSet() ?? [];
    const withLoras = requests.map((r) =>
      r.loras === undefined && defaults.length > 0 ? { ...r, loras: defaults } : r,
    );
    // Control: a BFL Control LoRA in the set needs a control image and the control engine, and vice versa.
    const controlOf = new Map<SampleRequest, number>();
    for (const [i, r] of withLoras.entries()) {
      const set = r.loras ?? [];
      const control = this.controlChannelsFor(set);
      checkControlRequest(r.controlImage, control);
      controlOf.set(requests[i]!, control);
      if (set.length > 0) await this.loraFeeds(r.mode ?? 'original', set, control);
    }
    const byLen = groupBy(
      requests,
      (r) => `${r.mode ?? 'original'}|${r.maxSequenceLength ?? DEFAULTS.maxSequenceLength}`,
    );
    const states = new Map<SampleRequest, SampleState>();
    for (const group of byLen) {
      const first = group[0]!;
      const mode = first.mode ?? 'original';
      const manifest = await this.manifest(mode);
      const grids = group.map((r) => this.validate(r, manifest));
      const enc = await this.encodePrompts(
        group.map((r) => r.prompt),
        group.map((r) => r.prompt2 ?? r.prompt),
        first.maxSequenceLength ?? DEFAULTS.maxSequenceLength,
        mode,
      );
      for (const [i, r] of group.entries()) {
        const grid = grids[i]!;
        const packedChannels = manifest.config.inChannels;
        const explicit = r.latents ? checkedLatents(r.latents, grid.seqLen * packedChannels) : undefined;
        const controlChannels = controlOf.get(r) ?? 0;
        // Control samples draw the control latent's noise, then the starting noise, from one generator (control.ts).
        const { latents, control } = controlChannels
          ? await prepareControlSample({
              image: r.controlImage!,
              seed: r.seed,
              grid,
              encoder: await this.controlEncoder(mode, controlChannels),
              latentChannels: manifest.config.latentChannels,
              vaeScaleFactor: manifest.config.vaeScaleFactor,
              scalingFactor: manifest.config.scalingFactor,
              shiftFactor: manifest.config.shiftFactor,
              latents: explicit,
            })
          : {
              latents:
                explicit ??
                packLatents(
                  noiseForSeeds([r.seed], manifest.config.latentChannels, grid.h, grid.w),
                  1,
                  manifest.config.latentChannels,
                  grid.h,
                  grid.w,
                ),
              control: undefined,
            };
        const { sigmas, timesteps } = fluxSigmas(r.steps, grid.seqLen, this.scheduler);
        states.set(r, {
          id: randomUUID(),
          request: withLoras[requests.indexOf(r)]!,
          grid,
          textLen: enc.textLen,
          pooled: enc.pooled[i]!,
          embeds: enc.embeds[i]!,
          latents,
          ...(control ? { control } : {}),
          sigmas,
          timesteps,
          step: 0,
        });
      }
    }
    return requests.map((r) => states.get(r)!);
  }

  /** One Euler step for every unfinished sample, one transformer run per compatible group. */
  async step(samples: SampleState[]): Promise<void> {
    const pending = samples.filter((s) => !isFinished(s));
    // Only samples with the same LoRA set share a forward: the LoRA factors are per-run inputs.
    for (const group of groupBy(pending, (s) => `${stepGroupKey(s)}|${loraSetKey(s.request.loras)}`)) {
      await this.stepGroup(group);
    }
  }

  private async stepGroup(group: SampleState[]): Promise<void> {
    const first = group[0]!;
    const mode = first.request.mode ?? 'original';
    const set = first.request.loras ?? [];
    // Control samples (only ever grouped with each other: same LoRA set) run on the control engine.
    const control = first.control ? first.control.length / first.grid.seqLen : 0;
    const lora = set.length > 0 ? await this.loraFeeds(mode, set, control) : undefined;
    const engine = lora?.engine ?? (await this.engine(mode));
    const { sessions, manifest } = engine;
    await this.ensureModulation(group, engine);
    const feeds = this.feedsFor(group, manifest);
    if (lora) Object.assign(feeds, lora.feeds);
    // Mode S: First-Block-Cache decides per step whether the transformer's tail runs (step-cache.ts).
    const cache = lora ? undefined : stepCacheOf(engine);
    const v = cache
      ? await cache.run(group, feeds)
      : ((await sessions.transformer.run(feeds)).sample!.data as Float32Array); // [B, L, C]
    const per = first.grid.seqLen * manifest.config.outChannels;
    group.forEach((s, i) => {
      eulerStep(s.latents, v.subarray(i * per, (i + 1) * per), s.sigmas[s.step]!, s.sigmas[s.step + 1]!, s.latents);
      s.step++;
    });
  }

  /** The full transformer graph's feeds for one step of `group` (samples of one grid and text length) in `mode`. */
  async transformerFeeds(group: SampleState[], mode = 'original'): Promise<Record<string, HostTensor>> {
    const engine = await this.engine(mode);
    await this.ensureModulation(group, engine);
    return this.feedsFor(group, engine.manifest);
  }

  /**
   * Engines with a modulation component (XL): computes the modulation vectors of every step of each sample of `group`
   * that lacks them for this engine, in one run over `[Σ steps, …]` rows (timesteps `modelTimestep(timesteps[i])`,
   * the sample's guidance and pooled embedding); each step then feeds its row (see {@link feedsFor}).
   */
  private async ensureModulation(group: SampleState[], engine: Engine): Promise<void> {
    const session = engine.modulation;
    const key = engine.manifest.modulation?.key;
    if (!session || !key) return;
    const missing = group.filter((s) => s.modulation?.key !== key);
    if (missing.length === 0) return;
    const cfg = engine.manifest.config;
    const counts = missing.map((s) => s.timesteps.length);
    const n = counts.reduce((a, c) => a + c, 0);
    const timestep = new Float32Array(n);
    const guidance = new Float32Array(n);
    const pooled = new Float32Array(n * cfg.pooledProjectionDim);
    let row = 0;
    for (const s of missing) {
      for (let i = 0; i < s.timesteps.length; i++, row++) {
        timestep[row] = modelTimestep(s.timesteps[i]!);
        guidance[row] = s.request.guidanceScale;
        pooled.set(s.pooled, row * cfg.pooledProjectionDim);
      }
    }
    const out = await session.run({
      timestep: { data: timestep, dims: [n] },
      ...(cfg.guidanceEmbeds ? { guidance: { data: guidance, dims: [n] } } : {}),
      pooled_projections: { data: pooled, dims: [n, cfg.pooledProjectionDim] },
    });
    const rows = out.modulation!.data as Float32Array;
    const width = rows.length / n;
    let start = 0;
    missing.forEach((s, i) => {
      s.modulation = { key, rows: rows.slice(start * width, (start + counts[i]!) * width), width };
      start += counts[i]!;
    });
  }

  private feedsFor(group: SampleState[], manifest: EngineManifest): Record<string, HostTensor> {
    const first = group[0]!;
    const b = group.length;
    const { seqLen: l, h, w } = first.grid;
    const t = first.textLen;
    const rope = this.rope(t, h, w, manifest.config.axesDimsRope);
    const feeds: Record<string, HostTensor> = {
      // [B, L, in]; control samples: concat(latents [L, 64], control [L, 64]) → [L, 128] per sample.
      hidden_states: {
        data: stack(group.map((s) => (s.control ? concatFeatures(s.latents, s.control, l) : s.latents))),
        dims: [b, l, manifest.config.inChannels],
      },
      encoder_hidden_states: {
        data: stack(group.map((s) => s.embeds)),
        dims: [b, t, manifest.config.jointAttentionDim],
      },
      rope_cos: { data: rope.cos, dims: [rope.seqLen, rope.dim] },
      rope_sin: { data: rope.sin, dims: [rope.seqLen, rope.dim] },
    };
    const modulationKey = manifest.modulation?.key;
    if (modulationKey) {
      // XL: each sample's row of its current step, computed before its first step (ensureModulation). [B, M]
      const rows = group.map((s) => {
        const m = s.modulation;
        if (m?.key !== modulationKey) throw new Error(`sample ${s.id}: modulation not computed for this engine`);
        return m.rows.subarray(s.step * m.width, (s.step + 1) * m.width);
      });
      feeds.modulation = { data: stack(rows), dims: [b, rows[0]!.length] };
      return feeds;
    }
    feeds.pooled_projections = {
      data: stack(group.map((s) => s.pooled)),
      dims: [b, manifest.config.pooledProjectionDim],
    };
    // FluxPipeline passes t/1000 (float32) of the scheduler timestep, which the model scales back by 1000.
    feeds.timestep = { data: Float32Array.from(group.map((s) => modelTimestep(s.timesteps[s.step]!))), dims: [b] };
    if (manifest.config.guidanceEmbeds) {
      feeds.guidance = { data: Float32Array.from(group.map((s) => s.request.guidanceScale)), dims: [b] };
    }
    return feeds;
  }

  /** Decodes finished samples; returns `[3, H, W]` float images in [0,1], in input order. */
  async decode(samples: SampleState[]): Promise<Float32Array[]> {
    const result = new Map<SampleState, Float32Array>();
    for (const group of groupBy(samples, decodeGroupKey)) {
      const { sessions, manifest } = await this.engine(group[0]!.request.mode ?? 'original');
      const { h, w } = group[0]!.grid;
      const b = group.length;
      const c = manifest.config.latentChannels;
      const z = latentsForDecode(
        stack(group.map((s) => s.latents)),
        b,
        h,
        w,
        manifest.config.scalingFactor,
        manifest.config.shiftFactor,
      );
      const out = await sessions.vae.run({ latent: { data: z, dims: [b, c, h, w] } });
      const img = postprocessDecoded(out.sample!.data as Float32Array);
      for (const [i, im] of splitBatch(img, b).entries()) result.set(group[i]!, im);
    }
    return samples.map((s) => result.get(s)!);
  }

  /** Text-to-image in one call (see {@link GenerateOptions}). */
  async generate(opts: GenerateOptions): Promise<GenerateResult> {
    const prompts = opts.prompts ?? (opts.prompt !== undefined ? [opts.prompt] : []);
    if (prompts.length === 0) throw new FluxArgumentError('prompt', 'give a prompt or a non-empty prompts list');
    const prompts2 = Array.isArray(opts.prompt2)
      ? opts.prompt2
      : prompts.map((p) => (opts.prompt2 as string | undefined) ?? p);
    if (prompts2.length !== prompts.length) throw new FluxArgumentError('prompt2', 'needs one entry per prompt');
    const height = opts.height ?? DEFAULTS.height;
    const width = opts.width ?? DEFAULTS.width;
    const seed = opts.seed;
    const seeds = Array.isArray(seed) ? seed : prompts.map((_, i) => (seed ?? 0) + i);
    if (seeds.length !== prompts.length) throw new FluxArgumentError('seed', 'needs one seed per prompt');
    const grid = latentGrid(height, width);
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
        steps: opts.steps ?? DEFAULTS.steps,
        guidanceScale: opts.guidanceScale ?? DEFAULTS.guidanceScale,
        seed: seeds[i]!,
        maxSequenceLength: opts.maxSequenceLength ?? DEFAULTS.maxSequenceLength,
        latents: opts.latents?.slice(i * perSample, (i + 1) * perSample),
        mode: opts.mode,
        ...(opts.loras !== undefined ? { loras: opts.loras } : {}),
        ...(opts.controlImage !== undefined ? { controlImage: opts.controlImage } : {}),
      })),
    );
    void grid;
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
    await this.loader.close();
  }

  private validate(r: SampleRequest, manifest: EngineManifest) {
    if (typeof r.prompt !== 'string') throw new FluxArgumentError('prompt', 'must be a string');
    if (!Number.isInteger(r.steps) || r.steps < 1 || r.steps > 1000) {
      throw new FluxArgumentError('steps', `must be an integer in 1..1000, got ${r.steps}`);
    }
    if (!Number.isFinite(r.guidanceScale))
      throw new FluxArgumentError('guidanceScale', `must be finite, got ${r.guidanceScale}`);
    return latentGrid(r.height, r.width, manifest.config.vaeScaleFactor);
  }

  private rope(textLen: number, h: number, w: number, axes: number[]): RopeTables {
    const key = `${textLen}|${h}x${w}|${axes.join(',')}`;
    let r = this.ropeCache.get(key);
    if (!r) {
      // Text tokens first, then image tokens, as the transformer concatenates them. [T + L, 3]
      r = ropeTables(concatIds(textIds(textLen), imageIds(h, w)), axes);
      if (this.ropeCache.size > 32) this.ropeCache.clear();
      this.ropeCache.set(key, r);
    }
    return r;
  }
}

/** Key of a LoRA set for grouping (order kept: it fixes the rank-concatenation order of the feeds). */
function loraSetKey(loras: SampleRequest['loras']): string {
  return loras && loras.length > 0 ? loras.map((l) => `${l.name}:${l.strength}`).join(',') : '-';
}

/** Splits a `[B, ...]` array into B views. */
function splitBatch(data: Float32Array, b: number): Float32Array[] {
  const per = data.length / b;
  return Array.from({ length: b }, (_, i) => data.slice(i * per, (i + 1) * per));
}

function checkedLatents(latents: Float32Array, expected: number): Float32Array {
  if (latents.length !== expected) {
    throw new FluxArgumentError('latents', `expected ${expected} values ([L, C] packed), got ${latents.length}`);
  }
  return Float32Array.from(latents);
}
