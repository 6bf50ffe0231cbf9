/**
 * @file `Model`: every servable mode with its limits, the seed card's published latency and what this server
 * measured; and the `models` query.
 */
import {
  ASPECT_RATIOS,
  type ModelEntry,
  type ModePlanSummary,
  type ModeQuality,
  PUBLISHED_SPEC_SOURCE,
} from '../../service/index.ts';
import { builder } from '../builder.ts';

const SpecOrigin = builder.enumType('SpecOrigin', {
  description: 'Where a latency number comes from.',
  values: {
    PUBLISHED: {
      description:
        "FLUX.1-dev's latency as stated on the TheStage seed model card: not measured here, and not the served " +
        "model's unless it is FLUX.1-dev (flux-mini and flux-tiny are far smaller).",
    },
    BENCHMARK: {
      description:
        "Measured by the repository's mode benchmark (`bench/results/modes.json`, MODES_RESULTS) on the machine " +
        'named in `hardware`, not live by this server.',
    },
    MEASURED: {
      description:
        "Measured by this server's engine: live on its own hardware (source `this server`), or by the engine's " +
        'benchmark on the card named in `hardware` (source: the result file).',
    },
  },
});

interface LatencySpecShape {
  origin: 'PUBLISHED' | 'BENCHMARK' | 'MEASURED';
  hardware: string;
  width: number;
  height: number;
  steps: number | null;
  latencySeconds: number | null;
  meanStepMs: number | null;
  jobs: number | null;
  source: string;
}

/** A benchmark-file row (the CUDA engine's, MEASURED; the elastic-mode benchmark's, BENCHMARK) as a spec row. */
function benchmarkSpec(origin: LatencySpecShape['origin'], b: ModelEntry['benchmarks'][number]): LatencySpecShape {
  return {
    origin,
    hardware: b.hardware,
    width: b.width,
    height: b.height,
    steps: b.steps,
    latencySeconds: b.latencySeconds,
    meanStepMs: b.meanStepMs,
    jobs: b.runs,
    source: b.source,
  };
}

const LatencySpec = builder.objectRef<LatencySpecShape>('LatencySpec').implement({
  description: 'Seconds for one image of the given size, published or measured.',
  fields: (t) => ({
    origin: t.field({ type: SpecOrigin, resolve: (s) => s.origin }),
    hardware: t.exposeString('hardware', { description: 'GPU of a published row; the device of a measured one.' }),
    width: t.exposeInt('width'),
    height: t.exposeInt('height'),
    steps: t.exposeInt('steps', { nullable: true, description: 'Null when the source does not state it.' }),
    latencySeconds: t.exposeFloat('latencySeconds', {
      nullable: true,
      description: 'Null where the card says N/A.',
    }),
    meanStepMs: t.exposeFloat('meanStepMs', { nullable: true, description: 'Measured rows only.' }),
    jobs: t.exposeInt('jobs', { nullable: true, description: 'Jobs measured (measured rows only).' }),
    source: t.exposeString('source'),
  }),
});

const ModelLimits = builder.simpleObject('ModelLimits', {
  description: 'What a request to this model may ask for.',
  fields: (t) => ({
    minSide: t.int(),
    maxSide: t.int(),
    sideMultiple: t.int({ description: 'Width and height must be multiples of this.' }),
    minSteps: t.int(),
    maxSteps: t.int(),
    maxImages: t.int({ description: 'Images per request (the batch size).' }),
    maxPromptChars: t.int(),
    minGuidance: t.float(),
    maxGuidance: t.float(),
    aspectRatios: t.stringList(),
    defaultWidth: t.int({
      description: "Width of a request that names no size: the model's native size (flux-mini 256), else 1024.",
    }),
    defaultHeight: t.int({ description: 'Height of a request that names no size (see `defaultWidth`).' }),
  }),
});

const PromptFollowingRef = builder.objectRef<NonNullable<ModeQuality['promptFollowing']>>('PromptFollowing').implement({
  description:
    "How often the mode's images show what a prompt of flux-mini's caption grammar asks, per attribute, as the " +
    'deterministic detector judges them (`npm run bench:quality`). Fractions in [0, 1].',
  fields: (t) => ({
    background: t.exposeFloat('background', { nullable: true, description: 'Background color right.' }),
    color: t.exposeFloat('color', { nullable: true, description: 'Object color right.' }),
    shape: t.exposeFloat('shape', { nullable: true, description: 'Shape right (circle, square, triangle).' }),
    position: t.exposeFloat('position', { nullable: true, description: 'Of the prompts that name a position.' }),
    size: t.exposeFloat('size', { nullable: true, description: 'Of the prompts that name a size.' }),
    prompts: t.exposeInt('prompts', { nullable: true, description: 'Prompts judged.' }),
  }),
});

const ModeQualityRef = builder.objectRef<ModeQuality>('ModeQuality').implement({
  description: "Quality of a mode's images against the reference mode's, as the mode benchmark measured it.",
  fields: (t) => ({
    psnr: t.exposeFloat('psnr', { description: 'Mean PSNR in dB (100 for identical images).' }),
    ssim: t.exposeFloat('ssim', { description: 'Mean SSIM (1 for identical images).' }),
    reference: t.exposeString('reference', { description: 'The mode compared with: `original`.' }),
    promptFollowing: t.field({
      type: PromptFollowingRef,
      nullable: true,
      description: 'Grammar-prompt following (flux-mini only); null where not measured.',
      resolve: (q) => q.promptFollowing,
    }),
    source: t.exposeString('source'),
  }),
});

const PlanAlgorithm = builder.objectRef<ModePlanSummary['algorithms'][number]>('PlanAlgorithm').implement({
  description: 'One compression algorithm of a plan and how many layers use it.',
  fields: (t) => ({
    algorithm: t.exposeString('algorithm', { description: 'e.g. `fp32` (kept), `int8-dyn`, `int8-b128`.' }),
    layers: t.exposeInt('layers'),
  }),
});

const StepCacheRef = builder.objectRef<NonNullable<ModePlanSummary['stepCache']>>('StepCachePlan').implement({
  description:
    'Step caching (reuse of the residual of unchanged steps) as planned for a mode; threshold 0: calibrated, none ' +
    'kept the quality floor, so the mode does not cache.',
  fields: (t) => ({
    threshold: t.exposeFloat('threshold'),
    maxConsecutive: t.int({
      nullable: true,
      description:
        "Most steps cached in a row after a full one (the CUDA planner's calibrated rule); null where not known " +
        '(benchmark rows).',
      resolve: (c) => c.maxConsecutive ?? null,
    }),
    fullSteps: t.exposeInt('fullSteps', { description: 'Steps run through the whole transformer.' }),
    cachedSteps: t.exposeInt('cachedSteps', { description: 'Steps that reused the cached residual.' }),
    psnr: t.float({
      nullable: true,
      description:
        "PSNR (dB) of the mode's worst calibration image at this threshold against `original` (CUDA planner's " +
        'calibration on the loaded model); null where not measured (benchmark rows).',
      resolve: (c) => c.psnr ?? null,
    }),
    minPsnr: t.float({
      nullable: true,
      description: "The mode's PSNR floor (dB) the calibration kept; null where not calibrated here.",
      resolve: (c) => c.minPsnr ?? null,
    }),
  }),
});

const PlanLayerRef = builder.objectRef<ModePlanSummary['layers'][number]>('PlanLayer').implement({
  description: "One layer of a mode's plan: the algorithm the planner chose for it and the measurements behind it.",
  fields: (t) => ({
    layer: t.exposeString('layer', {
      description: 'Linear layer of the XL graph, diffusers-style (fused, e.g. `transformer_blocks.0.attn.to_qkv`).',
    }),
    algorithm: t.exposeString('algorithm', { description: 'e.g. `fp32` (kept), `int8-dyn`, `int8-b128`.' }),
    error: t.float({
      nullable: true,
      description: 'Relative transformer output error when only this layer uses `algorithm`.',
      resolve: (l) => l.error ?? null,
    }),
    gainMs: t.float({
      nullable: true,
      description: 'Time saved against float32, ms per transformer forward on the benchmark configuration.',
      resolve: (l) => l.gainMs ?? null,
    }),
  }),
});

const ModePlanRef = builder.objectRef<ModePlanSummary>('ModePlan').implement({
  description: "The compression planner's choice for a mode: the benchmark's summary and this engine's per-layer plan.",
  fields: (t) => ({
    errorBudget: t.exposeFloat('errorBudget', {
      nullable: true,
      description: 'Error budget relative to `original`.',
    }),
    measuredError: t.exposeFloat('measuredError', {
      nullable: true,
      description: "The chosen layers' measured error.",
    }),
    algorithms: t.field({ type: [PlanAlgorithm], resolve: (p) => p.algorithms }),
    stepCache: t.field({ type: StepCacheRef, nullable: true, resolve: (p) => p.stepCache }),
    source: t.exposeString('source'),
    layers: t.field({
      type: [PlanLayerRef],
      description:
        "This server's engine plan for the mode, one entry per layer (as stored in the engine manifest); empty when " +
        'the mode is not planned yet here or the server has no local engine (scale-out API node).',
      resolve: (p) => p.layers,
    }),
  }),
});

/** GraphQL type of a {@link ModelEntry}. */
export const ModelRef = builder.objectRef<ModelEntry>('Model').implement({
  description: 'One servable (model, mode) pair.',
  fields: (t) => ({
    id: t.exposeID('id', { description: '`flux-1-dev-<size>-bs<batch>`, usable as `X-Model-Name` or OpenAI `model`.' }),
    mode: t.exposeString('mode'),
    size: t.exposeString('size'),
    name: t.exposeString('modelName', { description: 'Loaded weights, e.g. `flux-tiny`.' }),
    description: t.exposeString('description'),
    device: t.exposeString('device'),
    batchSize: t.exposeInt('batchSize'),
    isDefault: t.exposeBoolean('isDefault'),
    limits: t.field({
      type: ModelLimits,
      resolve: (m) => ({ ...m.limits, aspectRatios: Object.keys(ASPECT_RATIOS) }),
    }),
    specs: t.field({
      type: [LatencySpec],
      description:
        "Published rows (seed card) first, then the engine's benchmark rows, the mode benchmark's row, then rows " +
        'measured here.',
      resolve: (m, _args, ctx) => [
        ...m.published.map(
          (p): LatencySpecShape => ({
            origin: 'PUBLISHED',
            hardware: p.gpu,
            width: 1024,
            height: 1024,
            steps: null,
            latencySeconds: p.latencySeconds,
            meanStepMs: null,
            jobs: null,
            source: PUBLISHED_SPEC_SOURCE,
          }),
        ),
        ...m.benchmarks.map((b) => benchmarkSpec('MEASURED', b)),
        ...m.modeBenchmarks.map((b) => benchmarkSpec('BENCHMARK', b)),
        ...ctx.service.measured(m.mode).map(
          (r): LatencySpecShape => ({
            origin: 'MEASURED',
            hardware: m.device,
            width: r.width,
            height: r.height,
            steps: r.steps,
            latencySeconds: r.meanSeconds,
            meanStepMs: r.meanStepMs,
            jobs: r.jobs,
            source: 'this server',
          }),
        ),
      ],
    }),
    quality: t.field({
      type: ModeQualityRef,
      nullable: true,
      description: 'PSNR/SSIM against `original` from the mode benchmark; null when not recorded.',
      resolve: (m) => m.quality,
    }),
    plan: t.field({
      type: ModePlanRef,
      nullable: true,
      description: "The planner's summary for this mode from the mode benchmark; null for unplanned modes.",
      resolve: (m) => m.plan,
    }),
    loraRanks: t.exposeIntList('loraRanks', {
      description: 'Smallest and largest LoRA rank the engine takes; LoRAs are listed by the `loras` query.',
    }),
    loraFormats: t.exposeStringList('loraFormats', {
      description: 'LoRA file formats recognised (`bfl-control` needs a control-capable engine).',
    }),
  }),
});

builder.queryField('models', (t) =>
  t.field({
    type: [ModelRef],
    description: 'Every mode of every loaded model.',
    resolve: async (_root, _args, ctx) => {
      await ctx.service.refreshPlanLayers();
      return [...ctx.service.models()];
    },
  }),
);
