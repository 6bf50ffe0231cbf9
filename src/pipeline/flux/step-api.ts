/**
 * @file The step API of the FLUX pipeline, split at step granularity so the scheduler can interleave requests:
 *   prepare  — tokenize (CLIP 77, T5 maxSequenceLength), encode (CLIP pooled, T5 hidden states), seeded noise,
 *              sigma schedule with the dynamic shift of the image token count;
 *   step     — one transformer forward + Euler update for a set of samples, batched per compatible shape;
 *   decode   — unpack, VAE scaling/shift, VAE decoder, [0,1] postprocess.
 * Everything runs on the caller's thread; `executor.ts` hosts it in a worker.
 */
import { randomUUID } from 'node:crypto';
import type { Engine, EngineManifest, HostTensor } from '../../runtime/index.ts';
import { REFERENCE_MODE } from '../../shared/vocabulary/index.ts';
import type { SampleRequest } from '../executor.ts';
import { loraSetKey } from '../lora/selection.ts';
import { checkSampleRequest } from '../sample-checks.ts';
import { checkControlRequest, concatFeatures, prepareControlSample } from './control.ts';
import {
  blendInpaint,
  checkEditRequest,
  DEFAULT_STRENGTH,
  type EditState,
  editStartIndex,
  prepareEditSample,
  trueCfgCombine,
  usesTrueCfg,
} from './edit.ts';
import type { EngineRegistry } from './engine-registry.ts';
import { imageIds, packLatents, textIds } from './latents.ts';
import type { LoraEngines } from './lora-engines.ts';
import { noiseForSeeds, TorchCpuGenerator } from './noise.ts';
import { concatIds, type RopeTables, ropeTables } from './rope.ts';
import { decodeGroupKey, groupBy, isFinished, type SampleState, stack, stepGroupKey } from './sample-state.ts';
import { eulerStep, type FlowMatchConfig, fluxSigmas, modelTimestep } from './schedule.ts';
import { stepCacheOf } from './step-cache.ts';
import type { FluxTokenizers } from './tokenize.ts';
import { latentsForDecode, postprocessDecoded } from './vae-scaling.ts';

/** What a request leaves out gets diffusers' FluxPipeline defaults. */
export const SAMPLE_DEFAULTS = {
  height: 1024,
  width: 1024,
  steps: 28,
  guidanceScale: 3.5,
} as const;

/** See the file header. */
export class FluxSteps {
  private readonly ropeCache = new Map<string, RopeTables>();

  constructor(
    private readonly tokenizers: FluxTokenizers,
    private readonly scheduler: FlowMatchConfig,
    private readonly engines: EngineRegistry,
    private readonly loraEngines: LoraEngines,
  ) {}

  /**
   * CLIP pooled and T5 embeddings for a batch of prompts.
   * @returns `pooled [B, P]`, `embeds [B, T, D]` as per-sample arrays.
   */
  async encodePrompts(
    prompts: string[],
    prompts2: string[],
    maxSequenceLength: number,
    mode = REFERENCE_MODE,
  ): Promise<{ pooled: Float32Array[]; embeds: Float32Array[]; textLen: number }> {
    const { sessions } = await this.engines.engine(mode);
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

  /** Validates requests, encodes their prompts (one batched run) and draws their starting noise. */
  async prepare(requests: SampleRequest[]): Promise<SampleState[]> {
    if (requests.length === 0) return [];
    // Requests without `loras` take the default set as it is now; the LoRA engine is loaded here, not mid-step.
    const defaults = this.loraEngines.activeSet();
    const withLoras = requests.map((r) =>
      r.loras === undefined && defaults.length > 0 ? { ...r, loras: defaults } : r,
    );
    // Control: a BFL Control LoRA in the set needs a control image and the control engine, and vice versa.
    const controlOf = new Map<SampleRequest, number>();
    for (const [i, r] of withLoras.entries()) {
      const set = r.loras ?? [];
      const control = this.loraEngines.controlChannelsFor(set);
      checkControlRequest(r.controlImage, control);
      controlOf.set(requests[i]!, control);
      checkEditRequest(r);
      if (set.length > 0) await this.loraEngines.feeds(r.mode ?? REFERENCE_MODE, set, control);
    }
    const byLen = groupBy(
      requests,
      (r) => `${r.mode ?? REFERENCE_MODE}|${r.maxSequenceLength ?? this.tokenizers.defaultT5Length}`,
    );
    const states = new Map<SampleRequest, SampleState>();
    for (const group of byLen) {
      const first = group[0]!;
      const mode = first.mode ?? REFERENCE_MODE;
      const manifest = await this.engines.manifest(mode);
      const grids = group.map((r) => checkSampleRequest(r, manifest.config.inChannels, manifest.config.vaeScaleFactor));
      // True CFG: the negative prompts ride in the same batched encoder run, after the positive ones.
      const cfg = group.filter(usesTrueCfg);
      const enc = await this.encodePrompts(
        [...group.map((r) => r.prompt), ...cfg.map((r) => r.negativePrompt!)],
        [...group.map((r) => r.prompt2 ?? r.prompt), ...cfg.map((r) => r.negativePrompt!)],
        first.maxSequenceLength ?? this.tokenizers.defaultT5Length,
        mode,
      );
      for (const [i, r] of group.entries()) {
        const grid = grids[i]!;
        const explicit = r.latents ? Float32Array.from(r.latents) : undefined; // checked above
        const controlChannels = controlOf.get(r) ?? 0;
        const c = manifest.config.latentChannels;
        const full = fluxSigmas(r.steps, grid.seqLen, this.scheduler);
        // img2img / inpainting run the last `strength` share of the schedule (edit.ts).
        const start = r.image ? editStartIndex(r.steps, r.strength ?? DEFAULT_STRENGTH) : 0;
        const sigmas = full.sigmas.slice(start);
        const timesteps = full.timesteps.slice(start);
        let latents: Float32Array;
        let control: Float32Array | undefined;
        let edit: EditState | undefined;
        if (controlChannels) {
          // Control samples draw the control latent's noise, then the starting noise, from one generator (control.ts).
          ({ latents, control } = await prepareControlSample({
            image: r.controlImage!,
            seed: r.seed,
            grid,
            encoder: await this.loraEngines.controlEncoder(mode, controlChannels),
            latentChannels: c,
            vaeScaleFactor: manifest.config.vaeScaleFactor,
            scalingFactor: manifest.config.scalingFactor,
            shiftFactor: manifest.config.shiftFactor,
            latents: explicit,
          }));
        } else if (r.image) {
          ({ latents, edit } = await prepareEditSample({
            request: r,
            grid,
            encoder: await this.engines.imageEncoder(),
            latentChannels: c,
            vaeScaleFactor: manifest.config.vaeScaleFactor,
            scalingFactor: manifest.config.scalingFactor,
            shiftFactor: manifest.config.shiftFactor,
            sigma0: sigmas[0]!,
          }));
        } else {
          latents = explicit ?? packLatents(this.noiseOf(r, c, grid.h, grid.w), 1, c, grid.h, grid.w);
        }
        const state: SampleState = {
          id: randomUUID(),
          request: withLoras[requests.indexOf(r)]!,
          grid,
          textLen: enc.textLen,
          pooled: enc.pooled[i]!,
          embeds: enc.embeds[i]!,
          latents,
          ...(control ? { control } : {}),
          ...(edit ? { edit } : {}),
          sigmas,
          timesteps,
          step: 0,
        };
        const neg = cfg.indexOf(r);
        if (neg >= 0) {
          // The negative branch shares the latents array; its step is synced before each run (stepGroup).
          state.negative = {
            ...state,
            id: `${state.id}:negative`,
            pooled: enc.pooled[group.length + neg]!,
            embeds: enc.embeds[group.length + neg]!,
          };
        }
        states.set(r, state);
      }
    }
    return requests.map((r) => states.get(r)!);
  }

  /** Seeded starting noise `[C, h, w]`: the sample's own generator, or its share of one batch generator. */
  private noiseOf(r: SampleRequest, c: number, h: number, w: number): Float32Array {
    const g = r.sharedGenerator;
    if (!g) return noiseForSeeds([r.seed], c, h, w);
    const n = c * h * w;
    return new TorchCpuGenerator(r.seed).randn(g.batch * n).slice(g.index * n, (g.index + 1) * n);
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
    const mode = first.request.mode ?? REFERENCE_MODE;
    const set = first.request.loras ?? [];
    // Control samples (only ever grouped with each other: same LoRA set) run on the control engine.
    const control = first.control ? first.control.length / first.grid.seqLen : 0;
    const lora = set.length > 0 ? await this.loraEngines.feeds(mode, set, control) : undefined;
    const engine = lora?.engine ?? (await this.engines.engine(mode));
    const { sessions, manifest } = engine;
    await this.ensureModulation(group, engine);
    // True CFG: the negative branches join the batch after the positive ones, [pos…, neg…] → one run of B + N.
    const negatives = group.flatMap((s) => (s.negative ? [s.negative] : []));
    for (const n of negatives) n.step = group.find((s) => s.negative === n)!.step;
    const batch = negatives.length > 0 ? [...group, ...negatives] : group;
    if (negatives.length > 0) await this.ensureModulation(negatives, engine);
    const feeds = this.feedsFor(batch, manifest);
    if (lora) Object.assign(feeds, lora.feeds);
    // Mode S: First-Block-Cache decides per step whether the transformer's tail runs (step-cache.ts); its residual
    // bookkeeping is per positive sample, so true-CFG batches run the full graph.
    const cache = lora || negatives.length > 0 ? undefined : stepCacheOf(engine);
    const v = cache
      ? await cache.run(group, feeds)
      : ((await sessions.transformer.run(feeds)).sample!.data as Float32Array); // [B + N, L, C]
    const per = first.grid.seqLen * manifest.config.outChannels;
    let neg = group.length;
    group.forEach((s, i) => {
      const pos = v.subarray(i * per, (i + 1) * per);
      if (s.negative) {
        trueCfgCombine(pos, v.subarray(neg * per, (neg + 1) * per), s.request.trueCfgScale!);
        neg++;
      }
      eulerStep(s.latents, pos, s.sigmas[s.step]!, s.sigmas[s.step + 1]!, s.latents);
      s.step++;
      // Inpainting: the unmasked region goes back to the image, re-noised to the next σ (the clean image at the end).
      if (s.edit) blendInpaint(s.latents, s.edit, isFinished(s) ? undefined : s.sigmas[s.step]!);
    });
  }

  /** The full transformer graph's feeds for one step of `group` (samples of one grid and text length) in `mode`. */
  async transformerFeeds(group: SampleState[], mode = REFERENCE_MODE): Promise<Record<string, HostTensor>> {
    const engine = await this.engines.engine(mode);
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
    // One sample per VAE run: its full-resolution activations are the largest buffers of a generation (ORT's
    // arena keeps what the largest run needed), and per-sample runs cost no more compute than a batched one.
    for (const group of groupBy(samples, decodeGroupKey).flatMap((g) => g.map((s) => [s]))) {
      const { sessions, manifest } = await this.engines.engine(group[0]!.request.mode ?? REFERENCE_MODE);
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

/** Splits a `[B, ...]` array into B views. */
export function splitBatch(data: Float32Array, b: number): Float32Array[] {
  const per = data.length / b;
  return Array.from({ length: b }, (_, i) => data.slice(i * per, (i + 1) * per));
}
