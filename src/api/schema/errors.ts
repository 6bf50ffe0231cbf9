/**
 * @file Error types returned as data (Pothos errors plugin): an `Error` interface and one object per domain
 * error class of `service/errors.ts`.
 */
import {
  NotFoundError,
  QueueFullError,
  ServiceUnavailableError,
  UnknownModelError,
  ValidationError,
} from '../../service/index.ts';
import { builder } from '../builder.ts';

/** Common shape of every error returned as data. */
export const ErrorInterface = builder.interfaceRef<Error & { code?: string }>('Error').implement({
  description: 'A failure returned as data; `code` is stable and machine-readable.',
  fields: (t) => ({
    message: t.exposeString('message'),
    code: t.string({ resolve: (e) => e.code ?? 'error' }),
  }),
});

builder.objectType(ValidationError, {
  name: 'ValidationError',
  description: 'An input value is out of range or malformed.',
  interfaces: [ErrorInterface],
  isTypeOf: (v) => v instanceof ValidationError,
  fields: (t) => ({
    field: t.exposeString('field', { description: 'The input field at fault, e.g. `width`.' }),
  }),
});

builder.objectType(QueueFullError, {
  name: 'QueueFullError',
  description: 'The queue is full; retry later.',
  interfaces: [ErrorInterface],
  isTypeOf: (v) => v instanceof QueueFullError,
  fields: (t) => ({
    maxQueueSize: t.exposeInt('maxQueueSize'),
    retryAfterSeconds: t.exposeInt('retryAfterSeconds'),
  }),
});

/** Marks a plain-object NotFoundError payload (subscriptions cannot yield Error instances; see progress.ts). */
export const NOT_FOUND_PAYLOAD = Symbol('notFoundPayload');

builder.objectType(NotFoundError, {
  name: 'NotFoundError',
  description: 'No such job (unknown id, or evicted from the history).',
  interfaces: [ErrorInterface],
  isTypeOf: (v) => v instanceof NotFoundError || (typeof v === 'object' && v !== null && NOT_FOUND_PAYLOAD in v),
  fields: (t) => ({
    id: t.exposeString('id'),
    resource: t.exposeString('resource'),
  }),
});

builder.objectType(UnknownModelError, {
  name: 'UnknownModelError',
  description: 'The model id or mode is not served here.',
  interfaces: [ErrorInterface],
  isTypeOf: (v) => v instanceof UnknownModelError,
  fields: (t) => ({
    model: t.exposeString('model'),
    available: t.exposeStringList('available'),
  }),
});

builder.objectType(ServiceUnavailableError, {
  name: 'ServiceUnavailableError',
  description: 'A dependency is down (scale-out: Redis unreachable, or no engine worker registered); retry later.',
  interfaces: [ErrorInterface],
  isTypeOf: (v) => v instanceof ServiceUnavailableError,
  fields: (t) => ({
    retryAfterSeconds: t.exposeInt('retryAfterSeconds'),
  }),
});

export { NotFoundError, QueueFullError, ServiceUnavailableError, UnknownModelError, ValidationError };
