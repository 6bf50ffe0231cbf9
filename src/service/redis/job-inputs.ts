/**
 * @file A job's input images on their way to a scale-out worker: the control image, the img2img / inpainting image
 * and the inpainting mask each travel as the file bytes the API node received (its own binary key, written once
 * before the job is queued, expiring with the record, deleted when the job ends). Records are rewritten at every
 * step, so pixels never go into them. The worker decodes the bytes with the same decoder, so it gets the same
 * pixels as a single-process server.
 *
 * Size: each file is already limited at submission (MAX_CONTROL_IMAGE_BYTES, 10 MiB, and 16 Mpx: a ValidationError
 * `too_large` on its field); {@link MAX_JOB_INPUT_BYTES} bounds what one job may put into Redis in all.
 */
import { ValidationError } from '../errors.ts';
import type { ControlImageData, Job } from '../jobs.ts';
import { decodeImageBytes } from '../media/control-image.ts';
import { MAX_CONTROL_IMAGE_BYTES } from '../request.ts';
import type { RedisKeys } from './connection.ts';

/** The input files of a job, by the {@link Job} field holding them while the job waits. */
export const JOB_INPUTS = ['controlImage', 'editImage', 'editMask'] as const;
export type JobInput = (typeof JOB_INPUTS)[number];

/** The request field a job input came from (named in errors). */
const REQUEST_FIELD: Record<JobInput, string> = { controlImage: 'controlImage', editImage: 'image', editMask: 'mask' };

/** Most encoded bytes one job stores in Redis, all inputs together: three files at the per-file limit. */
export const MAX_JOB_INPUT_BYTES = 3 * MAX_CONTROL_IMAGE_BYTES;

/** The Redis key of one input of a job. */
export function inputKey(keys: RedisKeys, input: JobInput, jobId: string): string {
  return keys[input](jobId);
}

/** Every input key a job may have (to delete them, whichever exist). */
export function allInputKeys(keys: RedisKeys, jobId: string): string[] {
  return JOB_INPUTS.map((i) => inputKey(keys, i, jobId));
}

/**
 * The files to store for a job, keyed. Views of the job's bytes, no copy.
 * @throws ValidationError (`too_large`, on the field of the largest input) when they exceed {@link MAX_JOB_INPUT_BYTES}
 */
export function inputFiles(job: Job, keys: RedisKeys): { key: string; bytes: Buffer }[] {
  const files = JOB_INPUTS.flatMap((input) => {
    const data = job[input];
    if (!data) return [];
    const bytes = Buffer.from(data.bytes.buffer, data.bytes.byteOffset, data.bytes.byteLength);
    return [{ input, key: inputKey(keys, input, job.id), bytes }];
  });
  const total = files.reduce((sum, f) => sum + f.bytes.length, 0);
  if (total > MAX_JOB_INPUT_BYTES) {
    const largest = files.reduce((a, b) => (b.bytes.length > a.bytes.length ? b : a));
    throw new ValidationError(
      REQUEST_FIELD[largest.input],
      `the request's images have ${total} bytes in all, more than the ${MAX_JOB_INPUT_BYTES} a scale-out job carries`,
      'too_large',
    );
  }
  return files.map(({ key, bytes }) => ({ key, bytes }));
}

/** The inputs a job record says its job came with: the control image, and the image (and mask) of an edit. */
export function expectedInputs(job: Job): JobInput[] {
  const out: JobInput[] = [];
  if (job.hasControlImage) out.push('controlImage');
  if (job.request.edit) out.push('editImage');
  if (job.request.edit === 'inpaint') out.push('editMask');
  return out;
}

/**
 * Reads and decodes the inputs a job needs (see {@link expectedInputs}) into the job.
 * @throws Error naming the input when its key is gone (older than JOB_HISTORY_S) or does not decode
 */
export async function loadInputs(
  job: Job,
  keys: RedisKeys,
  getBuffer: (key: string) => Promise<Buffer | null>,
): Promise<void> {
  for (const input of expectedInputs(job)) {
    const param = REQUEST_FIELD[input];
    const bytes = await getBuffer(inputKey(keys, input, job.id));
    if (!bytes) throw new Error(`${param}: its file is gone from Redis (older than JOB_HISTORY_S?)`);
    try {
      // The file the API node received (validated there); decoding it again gives the same pixels.
      const data: ControlImageData = { image: await decodeImageBytes(bytes, { maxBytes: bytes.length, param }), bytes };
      job[input] = data;
    } catch (err) {
      throw new Error(`${param}: ${(err as Error).message}`);
    }
  }
}
