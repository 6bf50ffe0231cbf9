import { describe, expect, it } from 'vitest';
import { toHttpError } from '../../../src/api/rest/images.ts';
import { QueueFullError, UnknownModelError, ValidationError } from '../../../src/service/errors.ts';

describe('toHttpError', () => {
  it('maps validation errors to 400 with the request parameter name', () => {
    expect(toHttpError(new ValidationError('steps', 'bad'))).toMatchObject({
      status: 400,
      param: 'num_inference_steps',
    });
    expect(toHttpError(new ValidationError('width', 'bad'), true)).toMatchObject({ param: 'size' });
    expect(toHttpError(new ValidationError('width', 'bad'), false)).toMatchObject({ param: 'width' });
    expect(toHttpError(new ValidationError('numImages', 'bad'))).toMatchObject({ param: 'n' });
  });

  it('maps unknown models to 404 model_not_found and a full queue to 429 with Retry-After', () => {
    expect(toHttpError(new UnknownModelError('x', []))).toMatchObject({ status: 404, code: 'model_not_found' });
    const full = toHttpError(new QueueFullError(4, 3));
    expect(full).toMatchObject({ status: 429, code: 'queue_full' });
    expect(full.headers['retry-after']).toBe('3');
  });

  it('masks anything else as a 500', () => {
    const e = toHttpError(new Error('secret internals'));
    expect(e.status).toBe(500);
    expect(e.message).not.toContain('secret');
  });
});
