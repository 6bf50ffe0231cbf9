/**
 * @file `Model`: every servable mode with its limits, the seed card's published latency and what this server
 * measured; and the `models` query.
 */
import { ASPECT_RATIOS, type ModelEntry, PUBLISHED_SPEC_SOURCE } from '../../service/index.ts';
import { builder } from '../builder.ts';

const SpecOrigin = builder.enumType('SpecOrigin', {
  description: 'Where a latency number comes from.',
  values: {
    PUBLISHED: { description: 'Stated on the TheStage seed model card; not measured here.' },
    MEASURED: {
      description:
        "Measured by this server's engine: live on its own hardware (source `this server`), or by the engine's " +
        'benchmark on the card named in `hardware` (source: the result file).',
    },
  },
});

interface LatencySpecShape {
  origin: 'PUBLISHED' | 'MEASURED';
  hardware: string;
  width: number;
  height: number;
  steps: number | null;
  latencySeconds: number | null;
  meanStepMs: number | null;
  jobs: number | null;
  source: string;
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
      description: "Published rows (seed card) first, then the engine's benchmark rows, then rows measured here.",
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
        ...m.benchmarks.map(
          (b): LatencySpecShape => ({
            origin: 'MEASURED',
            hardware: b.hardware,
            width: b.width,
            height: b.height,
            steps: b.steps,
            latencySeconds: b.latencySeconds,
            meanStepMs: b.meanStepMs,
            jobs: b.runs,
            source: b.source,
          }),
        ),
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
    resolve: (_root, _args, ctx) => [...ctx.service.models()],
  }),
);
