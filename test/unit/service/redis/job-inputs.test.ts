/**
 * What a scale-out job puts into Redis besides its record: one key per input file (control image, edit image,
 * mask), which inputs a record says the worker must read, and the typed error of a job too large to carry.
 */
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../../src/service/errors.ts';
import type { ControlImageData, Job } from '../../../../src/service/jobs.ts';
import { redisKeys } from '../../../../src/service/redis/connection.ts';
import {
  allInputKeys,
  expectedInputs,
  inputFiles,
  MAX_JOB_INPUT_BYTES,
} from '../../../../src/service/redis/job-inputs.ts';
import type { GenerationRequest } from '../../../../src/service/request.ts';

const keys = redisKeys('p');
const file = (bytes: number): ControlImageData => ({
  image: { width: 1, height: 1, data: new Uint8Array(3) },
  bytes: new Uint8Array(bytes),
});
const job = (extra: Partial<Job>, request: Partial<GenerationRequest> = {}): Job =>
  ({
    id: 'j1',
    request: { prompt: 'x', ...request } as GenerationRequest,
    status: 'QUEUED',
    createdAt: new Date(0),
    step: 0,
    totalSteps: 4,
    images: [],
    ...extra,
  }) as Job;

describe('job input files for Redis', () => {
  it('stores each input under its own key, as the bytes received', () => {
    const files = inputFiles(job({ controlImage: file(3), editImage: file(5), editMask: file(7) }), keys);
    expect(files.map((f) => [f.key, f.bytes.length])).toEqual([
      ['p:control:j1', 3],
      ['p:edit-image:j1', 5],
      ['p:edit-mask:j1', 7],
    ]);
    expect(inputFiles(job({}), keys)).toEqual([]);
    expect(allInputKeys(keys, 'j1')).toEqual(['p:control:j1', 'p:edit-image:j1', 'p:edit-mask:j1']);
  });

  it('refuses a job whose files exceed the limit with a ValidationError `too_large` on the largest one', () => {
    const big = job({ editImage: file(MAX_JOB_INPUT_BYTES - 10), editMask: file(11) });
    expect(() => inputFiles(big, keys)).toThrowError(ValidationError);
    expect(() => inputFiles(big, keys)).toThrowError(expect.objectContaining({ field: 'image', code: 'too_large' }));
    // At the limit exactly, it travels.
    expect(inputFiles(job({ editImage: file(MAX_JOB_INPUT_BYTES - 10), editMask: file(10) }), keys)).toHaveLength(2);
  });

  it('reads what the record says the job came with', () => {
    expect(expectedInputs(job({}))).toEqual([]);
    expect(expectedInputs(job({ hasControlImage: true }))).toEqual(['controlImage']);
    expect(expectedInputs(job({}, { edit: 'img2img' }))).toEqual(['editImage']);
    expect(expectedInputs(job({ hasControlImage: true }, { edit: 'inpaint' }))).toEqual([
      'controlImage',
      'editImage',
      'editMask',
    ]);
  });
});
