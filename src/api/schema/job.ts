/**
 * @file `ImageJob` (a Relay node), `Image`, the `job`/`jobs` queries and the `cancelJob` mutation.
 */
import { decodeGlobalID, resolveArrayConnection } from '@pothos/plugin-relay';
import {
  elapsedMs,
  etaMs,
  type Job,
  NotFoundError,
  ServiceUnavailableError,
  type StoredImage,
  urlPathOf,
} from '../../service/index.ts';
import { type ApiContext, builder } from '../builder.ts';
import { LoraSelectionRef } from './lora.ts';
import { ModelRef } from './model.ts';

/** GraphQL enum values of job statuses (same spelling as the service). */
export const JobStatusEnum = builder.enumType('JobStatus', {
  values: ['QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELED'] as const,
});

/** GraphQL enum of output formats; values map to the service's lower-case names. */
export const ImageFormatEnum = builder.enumType('ImageFormat', {
  values: {
    PNG: { value: 'png' },
    WEBP: { value: 'webp' },
    JPEG: { value: 'jpeg' },
  } as const,
});

/** GraphQL type of a {@link StoredImage}. */
export const ImageRef = builder.objectRef<StoredImage>('Image').implement({
  description: 'A generated image file, served at a stable URL.',
  fields: (t) => ({
    id: t.exposeID('id'),
    index: t.exposeInt('index'),
    url: t.string({
      description: "Absolute URL; with API keys it carries a signature, so it works without the key's header.",
      resolve: (i, _a, ctx) => ctx.urlOf(urlPathOf(i.fileName)),
    }),
    path: t.string({
      description: 'URL path; with API keys, fetching it needs the Authorization header of the owner or an admin.',
      resolve: (i) => urlPathOf(i.fileName),
    }),
    format: t.field({ type: ImageFormatEnum, resolve: (i) => i.format }),
    contentType: t.exposeString('contentType'),
    width: t.exposeInt('width'),
    height: t.exposeInt('height'),
    byteSize: t.exposeInt('byteSize'),
    seed: t.exposeFloat('seed', { description: 'Seed of this image (job seed + index).' }),
    createdAt: t.string({ resolve: (i) => i.createdAt.toISOString() }),
  }),
});

const JobErrorRef = builder.simpleObject('JobError', {
  fields: (t) => ({ code: t.string(), message: t.string() }),
});

/** GraphQL node type of a {@link Job}. */
export const ImageJobRef = builder.objectRef<Job>('ImageJob');

builder.node(ImageJobRef, {
  description: 'One generation request and its progress.',
  id: { resolve: (j) => j.id },
  isTypeOf: (v) => typeof v === 'object' && v !== null && 'request' in v && 'totalSteps' in v,
  loadOne: async (id, ctx) => (await ctx.service.get(id, ctx.caller)) ?? null,
  fields: (t) => ({
    jobId: t.exposeString('id', { description: 'The raw job id (the global `id` decodes to it).' }),
    status: t.field({ type: JobStatusEnum, resolve: (j) => j.status }),
    queuePosition: t.int({
      nullable: true,
      description: '1-based position while QUEUED.',
      resolve: (j, _a, ctx) => ctx.service.queuePosition(j.id),
    }),
    step: t.exposeInt('step'),
    totalSteps: t.exposeInt('totalSteps'),
    progress: t.float({ resolve: (j) => (j.totalSteps > 0 ? j.step / j.totalSteps : 0) }),
    elapsedMs: t.float({ resolve: (j) => elapsedMs(j) }),
    etaMs: t.float({ nullable: true, resolve: (j) => etaMs(j) ?? null }),
    prompt: t.string({ resolve: (j) => j.request.prompt }),
    model: t.field({ type: ModelRef, resolve: (j) => j.request.model }),
    seed: t.float({ resolve: (j) => j.request.seed }),
    width: t.int({ resolve: (j) => j.request.width }),
    height: t.int({ resolve: (j) => j.request.height }),
    steps: t.int({ resolve: (j) => j.request.steps }),
    guidanceScale: t.float({ resolve: (j) => j.request.guidanceScale }),
    numImages: t.int({ resolve: (j) => j.request.numImages }),
    outputFormat: t.field({ type: ImageFormatEnum, resolve: (j) => j.request.outputFormat }),
    loras: t.field({
      type: [LoraSelectionRef],
      description: 'The LoRA set the job runs with (its own, or the default set at submission); empty for none.',
      resolve: (j) => j.request.loras ?? [],
    }),
    hasControlImage: t.boolean({
      description: 'Whether the request came with a control image (for a BFL Control LoRA).',
      resolve: (j) => j.hasControlImage === true,
    }),
    batchId: t.string({
      nullable: true,
      description: 'The engine batch it ran in, once started: jobs with the same id were stepped together.',
      resolve: (j) => j.batchId ?? null,
    }),
    createdAt: t.string({ resolve: (j) => j.createdAt.toISOString() }),
    startedAt: t.string({ nullable: true, resolve: (j) => j.startedAt?.toISOString() ?? null }),
    finishedAt: t.string({ nullable: true, resolve: (j) => j.finishedAt?.toISOString() ?? null }),
    images: t.loadableList({
      type: ImageRef,
      description: 'Empty until SUCCEEDED. Loaded in one batch for all jobs of a query.',
      load: async (ids: string[], ctx) => ctx.service.imagesOf(ids),
      resolve: (j) => j.id,
    }),
    previewUrl: t.string({
      nullable: true,
      resolve: (j, _a, ctx) => (j.previewPath ? ctx.urlOf(j.previewPath) : null),
    }),
    error: t.field({ type: JobErrorRef, nullable: true, resolve: (j) => j.error ?? null }),
    cancelReason: t.string({ nullable: true, resolve: (j) => j.cancelReason ?? null }),
  }),
});

/** Accepts a Relay global id (`ImageJob:<uuid>`, base64) or a raw job id. */
export function toJobId(id: string): string {
  try {
    const decoded = decodeGlobalID(id);
    if (decoded.typename === 'ImageJob') return decoded.id;
  } catch {
    // Not base64 of "Type:id": treat it as a raw id.
  }
  return id;
}

/** The caller's job (admins: any job); another key's job is NotFound, as if it did not exist. */
async function requireJob(id: string, ctx: ApiContext): Promise<Job> {
  const job = await ctx.service.get(toJobId(id), ctx.caller);
  if (!job) throw new NotFoundError('Job', id);
  return job;
}

builder.queryField('job', (t) =>
  t.field({
    type: ImageJobRef,
    errors: { types: [NotFoundError, ServiceUnavailableError] },
    args: { id: t.arg.id({ required: true, description: 'Global or raw job id.' }) },
    resolve: (_root, { id }, ctx) => requireJob(id, ctx),
  }),
);

builder.queryField('jobs', (t) =>
  t.connection({
    type: ImageJobRef,
    description: "Jobs newest first: the caller's own (an admin key sees every job).",
    args: { status: t.arg({ type: [JobStatusEnum], required: false }) },
    resolve: async (_root, args, ctx) =>
      resolveArrayConnection({ args }, await ctx.service.list(args.status ?? undefined, ctx.caller)),
  }),
);

builder.mutationField('cancelJob', (t) =>
  t.field({
    type: ImageJobRef,
    description:
      'Cancels a job: a queued one at once, a running one at the next step. Finished jobs are returned as is.',
    errors: { types: [NotFoundError, ServiceUnavailableError] },
    args: { id: t.arg.id({ required: true }) },
    resolve: async (_root, { id }, ctx) =>
      ctx.service.cancel((await requireJob(id, ctx)).id, 'canceled by client', ctx.caller),
  }),
);
