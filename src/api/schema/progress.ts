/**
 * @file The `jobProgress` subscription: a snapshot, one event per denoising step, then a terminal event (images,
 * failure or cancellation); in scale-out mode a `JobRetryEvent` when a lost worker's job starts again elsewhere. An unknown job id yields one `NotFoundError` event (errors as data here too).
 */
import { type JobEvent, NotFoundError } from '../../service/index.ts';
import { builder } from '../builder.ts';
import { ErrorInterface, NOT_FOUND_PAYLOAD } from './errors.ts';
import { ImageJobRef, ImageRef, JobStatusEnum, toJobId } from './job.ts';

type Ev<T extends JobEvent['type']> = Extract<JobEvent, { type: T }>;

const JobEventInterface = builder.interfaceRef<Exclude<JobEvent, Ev<'snapshot'>>>('JobEvent').implement({
  fields: (t) => ({
    jobId: t.exposeID('jobId'),
    elapsedMs: t.exposeFloat('elapsedMs', { description: 'Milliseconds since submission.' }),
  }),
});

const Snapshot = builder.objectRef<Ev<'snapshot'>>('JobSnapshotEvent').implement({
  description: 'The state of the job when the subscription started.',
  fields: (t) => ({
    jobId: t.id({ resolve: (e) => e.job.id }),
    job: t.field({ type: ImageJobRef, resolve: (e) => e.job }),
    status: t.field({ type: JobStatusEnum, resolve: (e) => e.job.status }),
    queuePosition: t.exposeInt('queuePosition', { nullable: true }),
    step: t.int({ resolve: (e) => e.job.step }),
    totalSteps: t.int({ resolve: (e) => e.job.totalSteps }),
    elapsedMs: t.exposeFloat('elapsedMs'),
    etaMs: t.float({ nullable: true, resolve: (e) => e.etaMs ?? null }),
  }),
});

const Started = builder.objectRef<Ev<'started'>>('JobStartedEvent').implement({
  description: 'The job left the queue and joined an engine batch.',
  interfaces: [JobEventInterface],
  fields: (t) => ({ totalSteps: t.exposeInt('totalSteps') }),
});

const Step = builder.objectRef<Ev<'step'>>('JobStepEvent').implement({
  description: 'One denoising step finished for every image of the job.',
  interfaces: [JobEventInterface],
  fields: (t) => ({
    step: t.exposeInt('step'),
    totalSteps: t.exposeInt('totalSteps'),
    etaMs: t.float({ nullable: true, resolve: (e) => e.etaMs ?? null }),
    previewUrl: t.string({
      nullable: true,
      description: 'Low-resolution preview decoded cheaply from the latents; only when the job asked for previews.',
      resolve: (e, _a, ctx) => (e.previewPath ? ctx.urlOf(e.previewPath) : null),
    }),
  }),
});

const Retrying = builder.objectRef<Ev<'retrying'>>('JobRetryEvent').implement({
  description:
    'Scale-out: the worker running the job was lost; another worker starts it again, so steps restart from 1.',
  interfaces: [JobEventInterface],
  fields: (t) => ({
    attempt: t.exposeInt('attempt', { description: 'The attempt now starting (2 for the first retry).' }),
    reason: t.exposeString('reason'),
  }),
});

const Succeeded = builder.objectRef<Ev<'succeeded'>>('JobSucceededEvent').implement({
  interfaces: [JobEventInterface],
  fields: (t) => ({ images: t.field({ type: [ImageRef], resolve: (e) => e.images }) }),
});

const Failed = builder.objectRef<Ev<'failed'>>('JobFailedEvent').implement({
  interfaces: [JobEventInterface],
  fields: (t) => ({ code: t.exposeString('code'), message: t.exposeString('message') }),
});

const Canceled = builder.objectRef<Ev<'canceled'>>('JobCanceledEvent').implement({
  interfaces: [JobEventInterface],
  fields: (t) => ({ reason: t.exposeString('reason') }),
});

// graphql-js turns a returned Error instance into a field error, so the not-found payload is a plain object
// carrying NotFoundError's fields.
type Payload = JobEvent | NotFoundError;

const JobProgressEvent = builder.unionType('JobProgressEvent', {
  types: [Snapshot, Started, Step, Retrying, Succeeded, Failed, Canceled, NotFoundError],
  resolveType: (v: Payload) => {
    if (!('type' in v)) return 'NotFoundError';
    const names = {
      snapshot: 'JobSnapshotEvent',
      started: 'JobStartedEvent',
      step: 'JobStepEvent',
      retrying: 'JobRetryEvent',
      succeeded: 'JobSucceededEvent',
      failed: 'JobFailedEvent',
      canceled: 'JobCanceledEvent',
    } as const;
    return names[v.type];
  },
});

// Keeps the interface reachable even though the union references NotFoundError directly.
void ErrorInterface;

async function* notFound(id: string): AsyncGenerator<Payload> {
  const err = new NotFoundError('Job', id);
  const plain = { message: err.message, code: err.code, id: err.id, resource: err.resource, [NOT_FOUND_PAYLOAD]: true };
  yield plain as unknown as NotFoundError;
}

builder.subscriptionField('jobProgress', (t) =>
  t.field({
    type: JobProgressEvent,
    description: 'Snapshot, one event per step, then SUCCEEDED (with image URLs), FAILED or CANCELED; then completes.',
    args: { id: t.arg.id({ required: true, description: 'Global or raw job id.' }) },
    subscribe: async (_root, { id }, ctx): Promise<AsyncIterable<Payload>> => {
      const jobId = toJobId(id);
      // Another key's job is not found, like an unknown id.
      return (await ctx.service.get(jobId, ctx.caller)) ? ctx.service.watch(jobId, ctx.caller) : notFound(id);
    },
    resolve: (event: Payload) => event,
  }),
);
