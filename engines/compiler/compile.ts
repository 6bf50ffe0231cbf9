/**
 * @file The engine compiler: turns a FLUX model repository into one ONNX graph per component plus an engine
 * manifest, cached on disk.
 *
 * Cache layout under `cacheDir`:
 *   components/<component>-<key>/model.onnx (+ model.onnx.data, descriptor.json)
 *   engines/<model>-<mode>-<key>/manifest.json   (points at the component folders)
 * A component key hashes the compiler version, the component's weights fingerprint and the build options, so the
 * text encoders and the VAE are compiled once and shared by every mode, and a restart reuses everything. Builds go
 * to a temporary folder renamed into place, so two processes compiling at once never see a half-written engine.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { isPlannedMode, resolveMode } from '../../src/shared/vocabulary/modes.ts';
import { type ModePlan, planChoices, planKey } from '../../src/shared/vocabulary/plan-types.ts';
import {
  type FluxTransformerConfig,
  resolveTransformerConfig,
} from '../../src/shared/vocabulary/transformer-config.ts';
import type { ComponentWeights, ModelRepo } from '../../src/shared/weights/index.ts';
import { buildClipGraph } from './flux/clip.ts';
import { buildLoraTransformerGraph } from './flux/lora-transformer.ts';
import { buildT5Graph } from './flux/t5.ts';
import { parseClipTextConfig, parseT5EncoderConfig } from './flux/text-config.ts';
import { buildTransformerGraph, type TransformerGraphOptions } from './flux/transformer.ts';
import { buildModulationGraph } from './flux/transformer-modulation.ts';
import { buildTransformerHead, buildTransformerTail } from './flux/transformer-split.ts';
import {
  buildVaeDecoderGraph,
  VAE_ATTENTION_QUERY_CHUNKS,
  vaeDecoderConfigFromJson,
  vaeScaleFactor,
} from './flux/vae.ts';
import { buildVaeEncoderGraph, vaeEncoderConfigFromJson } from './flux/vae-encoder.ts';
import { ExternalDataWriter } from './onnx/external-data.ts';
import { GraphBuilder } from './onnx/graph-builder.ts';
import { plannedPolicy } from './planner/algorithms.ts';

/**
 * Query blocks of the reference transformer graph's attention: at 1024² the joint sequence is 4608 tokens, a
 * `[B, H, 4608, 4608]` float32 score matrix per block (81 MiB per head and sample) that ORT's arena then keeps.
 */
const TRANSFORMER_ATTENTION_QUERY_CHUNKS = 16;

/** Bump when graphs change in a way that must invalidate cached engines. */
export const COMPILER_VERSION = '2';

/** Options of {@link compileEngine}. */
export interface CompileOptions {
  /** Elastic mode to build. @default 'original' */
  mode?: string;
  cacheDir: string;
  /** Rebuild even when cached. */
  force?: boolean;
  /**
   * Build the LoRA-enabled variant of the mode: every transformer Linear takes run-time LoRA factors as inputs
   * (`engines/compiler/flux/lora-policy.ts`). A separate engine (own cache key); the text encoders and VAE are shared.
   * @default false
   */
  lora?: boolean;
  /**
   * With `lora`: widen the transformer input by this many channels for BFL Control LoRAs (64 for FLUX: noisy +
   * packed control latents, docs/FLUX_SPEC.md §7.6), and add the VAE encoder as a fifth component (`vae_encoder`) to encode
   * the control image. Part of the cache key; 0 builds the ordinary LoRA engine. @default 0
   */
  controlChannels?: number;
  onLog?: (message: string) => void;
  /** The planner's plan; required by the compressed modes (L, M, S), ignored by the others. */
  plan?: ModePlan;
}

interface IoSpec {
  name: string;
  dtype: string;
  dims: (number | string)[];
}
interface Descriptor {
  inputs: IoSpec[];
  outputs: IoSpec[];
}

type ComponentKey =
  | 'clip'
  | 't5'
  | 'transformer'
  | 'vae'
  | 'vae_encoder'
  | 'transformer_head'
  | 'transformer_tail'
  | 'transformer_modulation';

/** A compressed mode compiled without its plan (the pipeline computes plans first, see `elastic-plan.ts`). */
export class PlanRequiredError extends Error {
  constructor(readonly mode: string) {
    super(`mode ${mode} is compiled from a per-layer plan; compute it first (FluxPipeline does so on first use)`);
    this.name = 'PlanRequiredError';
  }
}

/** What one component is built from: its weights, the options that key its cache entry, its graph builder. */
interface ComponentBuild {
  weights: ComponentWeights;
  options: unknown;
  build: (b: GraphBuilder, w: ReturnType<ComponentWeights['open']>) => Descriptor;
}

/** Builds one component into `componentsDir` unless cached (keyed by weights and options); returns its entry. */
function ensureComponent(
  componentsDir: string,
  name: ComponentKey,
  spec: ComponentBuild,
  modeName: string,
  force: boolean,
  log: (message: string) => void,
): { file: string; key: string; inputs: IoSpec[]; outputs: IoSpec[] } {
  const key = hash(`${COMPILER_VERSION}|${name}|${spec.weights.fingerprint}|${JSON.stringify(spec.options)}`);
  const dir = join(componentsDir, `${name}-${key.slice(0, 16)}`);
  if (force || !existsSync(join(dir, 'descriptor.json'))) {
    log(`compiling ${name} (${modeName}) from ${spec.weights.files.map((f) => basename(f)).join(', ')}`);
    buildComponent(dir, name, (b) => {
      const w = spec.weights.open();
      try {
        return spec.build(b, w);
      } finally {
        w.close();
      }
    });
  }
  const descriptor = JSON.parse(readFileSync(join(dir, 'descriptor.json'), 'utf8')) as Descriptor;
  return { file: join(dir, 'model.onnx'), key, ...descriptor };
}

/**
 * The VAE encoder alone (image → latent mean and log-variance), for img2img and inpainting on any engine of the
 * model: the same component (same cache key) control engines carry. Returns its ONNX file.
 */
export function compileVaeEncoder(
  repo: ModelRepo,
  options: { cacheDir: string; force?: boolean; onLog?: (message: string) => void },
): string {
  const vae = repo.components.vae;
  const cfg = vaeEncoderConfigFromJson(vae.config);
  const encoderOptions = { withLogvar: true, attentionQueryChunks: VAE_ATTENTION_QUERY_CHUNKS };
  const spec: ComponentBuild = {
    weights: vae,
    options: encoderOptions,
    build: (b, w) => buildVaeEncoderGraph(b, w, cfg, encoderOptions),
  };
  const log = options.onLog ?? (() => {});
  return ensureComponent(join(options.cacheDir, 'components'), 'vae_encoder', spec, 'any', options.force ?? false, log)
    .file;
}

/** Compiles (or finds in the cache) the engine of `mode`; returns the manifest path. */
export function compileEngine(repo: ModelRepo, options: CompileOptions): string {
  const mode = resolveMode(options.mode ?? 'original');
  const log = options.onLog ?? (() => {});
  const c = repo.components;
  const transformerConfig = c.transformer.config as FluxTransformerConfig;
  const tcfg = resolveTransformerConfig(transformerConfig);
  const vaeCfg = vaeDecoderConfigFromJson(c.vae.config);
  // Part of the VAE components' cache key: engines built before query-chunked attention are rebuilt.
  const vaeOptions = { attentionQueryChunks: VAE_ATTENTION_QUERY_CHUNKS };
  if (isPlannedMode(mode) && !options.plan) throw new PlanRequiredError(mode.name);
  const plan = isPlannedMode(mode) ? options.plan : undefined;
  // Graph switches + the plan's choices: JSON of this is the transformer components' cache key.
  // The reference graph's attention in query blocks (bounded memory, same numbers); fused attention needs none.
  const chunking = mode.transformer.fusedAttention ? {} : { attentionQueryChunks: TRANSFORMER_ATTENTION_QUERY_CHUNKS };
  const transformerKey = { ...mode.transformer, ...chunking, ...(plan ? { plan: planKey(plan) } : {}) };
  const transformerOptions: TransformerGraphOptions = {
    ...mode.transformer,
    ...chunking,
    ...(plan ? { linearPolicy: plannedPolicy(planChoices(plan)) } : {}),
  };
  // XL (not its LoRA variant): modulations of all steps computed up front by `transformer_modulation`.
  const modulationInput = (mode.precomputedModulation ?? false) && !options.lora;
  const control = options.lora ? (options.controlChannels ?? 0) : 0;
  if (!Number.isInteger(control) || control < 0)
    throw new Error(`controlChannels must be a non-negative integer, got ${options.controlChannels}`);
  const clipCfg = parseClipTextConfig(c.text_encoder.config, c.text_encoder.configSource);
  const t5Cfg = parseT5EncoderConfig(c.text_encoder_2.config, c.text_encoder_2.configSource);

  const builds: Partial<
    Record<
      ComponentKey,
      {
        weights: ComponentWeights;
        options: unknown;
        build: (b: GraphBuilder, w: ReturnType<ComponentWeights['open']>) => Descriptor;
      }
    >
  > = {
    clip: { weights: c.text_encoder, options: {}, build: (b, w) => buildClipGraph(b, w, clipCfg) },
    t5: { weights: c.text_encoder_2, options: {}, build: (b, w) => buildT5Graph(b, w, t5Cfg) },
    transformer: {
      weights: c.transformer,
      options: options.lora
        ? { ...transformerKey, lora: true, ...(control ? { controlChannels: control } : {}) }
        : modulationInput
          ? { ...transformerKey, modulationInput: true }
          : transformerKey,
      build: (b, w) =>
        options.lora
          ? buildLoraTransformerGraph(b, w, transformerConfig, { ...transformerOptions, controlChannels: control })
          : buildTransformerGraph(b, w, transformerConfig, { ...transformerOptions, modulationInput }),
    },
    vae: {
      weights: c.vae,
      options: vaeOptions,
      build: (b, w) => buildVaeDecoderGraph(b, w, vaeCfg, vaeOptions),
    },
  };
  if (control) {
    // Only control engines encode images: text-to-image engines never build (or load) the encoder.
    const encoderCfg = vaeEncoderConfigFromJson(c.vae.config);
    builds.vae_encoder = {
      weights: c.vae,
      options: { withLogvar: true, ...vaeOptions },
      build: (b, w) => buildVaeEncoderGraph(b, w, encoderCfg, { withLogvar: true, ...vaeOptions }),
    };
  }
  if (modulationInput) {
    builds.transformer_modulation = {
      weights: c.transformer,
      options: transformerKey,
      build: (b, w) => buildModulationGraph(b, w, transformerConfig, transformerOptions),
    };
  }
  if (mode.stepCache && !options.lora) {
    // S: the transformer cut after its first block, for First-Block-Cache (see flux/transformer-split.ts).
    builds.transformer_head = {
      weights: c.transformer,
      options: transformerKey,
      build: (b, w) => buildTransformerHead(b, w, transformerConfig, transformerOptions),
    };
    builds.transformer_tail = {
      weights: c.transformer,
      options: transformerKey,
      build: (b, w) => buildTransformerTail(b, w, transformerConfig, transformerOptions),
    };
  }

  const componentsDir = join(options.cacheDir, 'components');
  const entries = {} as Partial<
    Record<ComponentKey, { file: string; key: string; inputs: IoSpec[]; outputs: IoSpec[] }>
  >;
  const variant = options.lora ? `${mode.name}-lora${control ? `-control${control}` : ''}` : mode.name;
  const engineHash = createHash('sha256').update(`${COMPILER_VERSION}|${variant}`);
  for (const [name, spec] of Object.entries(builds) as [ComponentKey, NonNullable<(typeof builds)[ComponentKey]>][]) {
    const entry = ensureComponent(componentsDir, name, spec, mode.name, options.force ?? false, log);
    engineHash.update(entry.key);
    entries[name] = entry;
  }

  const modelName = basename(repo.root);
  const engineDir = join(
    options.cacheDir,
    'engines',
    `${modelName}-${variant}-${engineHash.digest('hex').slice(0, 16)}`,
  );
  const manifestPath = join(engineDir, 'manifest.json');
  if (!options.force && existsSync(manifestPath)) return manifestPath;
  mkdirSync(engineDir, { recursive: true });
  const manifest = {
    format: 'fluxql-engine/1',
    mode: mode.name,
    lora: options.lora ?? false,
    // Control engines: hidden_states is [B, L, in + controlChannels]; components.vae_encoder encodes control images.
    ...(control ? { controlChannels: control } : {}),
    precision: 'fp32',
    compilerVersion: COMPILER_VERSION,
    createdAt: new Date().toISOString(),
    model: { name: modelName, path: repo.root },
    components: Object.fromEntries(
      Object.entries(entries)
        .filter(([k]) => !k.startsWith('transformer_'))
        .map(([k, e]) => [k, { ...e, file: relative(engineDir, e.file) }]),
    ),
    ...(entries.transformer_head && entries.transformer_tail && mode.stepCache
      ? {
          stepCache: {
            ...mode.stepCache,
            head: { ...entries.transformer_head, file: relative(engineDir, entries.transformer_head.file) },
            tail: { ...entries.transformer_tail, file: relative(engineDir, entries.transformer_tail.file) },
          },
        }
      : {}),
    // XL: the modulation vectors of all steps, computed once per sample (see flux/transformer-modulation.ts).
    ...(entries.transformer_modulation
      ? {
          modulation: {
            ...entries.transformer_modulation,
            file: relative(engineDir, entries.transformer_modulation.file),
          },
        }
      : {}),
    config: {
      inChannels: tcfg.inChannels + control,
      outChannels: tcfg.outFeatures,
      axesDimsRope: [...tcfg.axesDimsRope],
      guidanceEmbeds: tcfg.guidanceEmbeds,
      jointAttentionDim: tcfg.jointAttentionDim,
      pooledProjectionDim: tcfg.pooledProjectionDim,
      latentChannels: vaeCfg.latentChannels,
      vaeScaleFactor: vaeScaleFactor(vaeCfg),
      scalingFactor: numberField(c.vae.config, 'scaling_factor', c.vae.configSource),
      shiftFactor: numberField(c.vae.config, 'shift_factor', c.vae.configSource),
      clipMaxLength: clipCfg.maxPositions,
    },
    plan: plan?.entries ?? [],
    ...(plan
      ? {
          planSummary: {
            budget: plan.budget,
            predictedError: plan.predictedError,
            measuredError: plan.measuredError,
            gainMs: plan.gainMs,
            calibration: plan.calibration,
          },
        }
      : {}),
  };
  writeAtomic(manifestPath, JSON.stringify(manifest, null, 2));
  return manifestPath;
}

function buildComponent(dir: string, name: string, build: (b: GraphBuilder) => Descriptor): void {
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  mkdirSync(tmp, { recursive: true });
  const ext = new ExternalDataWriter(join(tmp, 'model.onnx.data'));
  try {
    const b = new GraphBuilder({ name, externalData: ext });
    const descriptor = build(b);
    writeFileSync(join(tmp, 'model.onnx'), b.encode({ component: name }));
    writeFileSync(join(tmp, 'descriptor.json'), JSON.stringify(descriptor, null, 2));
  } catch (err) {
    ext.close();
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  ext.close();
  if (existsSync(join(dir, 'descriptor.json'))) {
    // Another process finished the same build first (or `force`): replace it; the content is identical.
    rmSync(dir, { recursive: true, force: true });
  }
  try {
    renameSync(tmp, dir);
  } catch (err) {
    // Another process renamed its identical build into place between our check and rename: keep it.
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(join(dir, 'descriptor.json'))) throw err;
  }
}

function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

function numberField(config: Readonly<Record<string, unknown>>, key: string, source: string): number {
  const v = config[key];
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new Error(`${source}: "${key}" must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function hash(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}
