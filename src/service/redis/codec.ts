/**
 * @file JSON encoding of jobs and events for Redis: dates travel as ISO strings and are revived on the way back.
 * The record holds everything `job(id)` answers, including the validated request (so workers need no catalogue).
 */
import type { JobEvent } from '../job-events.ts';
import type { Job, StoredImage } from '../jobs.ts';

type Wire<T> = {
  [K in keyof T]: T[K] extends Date ? string : T[K] extends Date | undefined ? string | undefined : T[K];
};

function reviveImages(images: Wire<StoredImage>[]): StoredImage[] {
  return images.map((i) => ({ ...i, createdAt: new Date(i.createdAt) }));
}

/** The stored form of a job (JSON.stringify turns dates into ISO strings). */
export function encodeJob(job: Job): string {
  // `cancelRequested` is per-process state; cancellation crosses processes through its own key. The input images
  // have their own keys too (`job-inputs.ts`), written once: records are rewritten at every step.
  const { cancelRequested: _local, controlImage: _pixels, editImage: _image, editMask: _mask, ...rest } = job;
  return JSON.stringify(rest);
}

/** Inverse of {@link encodeJob}. */
export function decodeJob(text: string): Job {
  const w = JSON.parse(text) as Wire<Job> & { images: Wire<StoredImage>[] };
  return {
    ...w,
    createdAt: new Date(w.createdAt),
    ...(w.startedAt ? { startedAt: new Date(w.startedAt) } : {}),
    ...(w.finishedAt ? { finishedAt: new Date(w.finishedAt) } : {}),
    images: reviveImages(w.images),
  } as Job;
}

/** The published form of an event (never a snapshot: those are built by the subscriber). */
export function encodeEvent(e: Exclude<JobEvent, { type: 'snapshot' }>): string {
  return JSON.stringify(e);
}

/** Inverse of {@link encodeEvent}; undefined for malformed messages. */
export function decodeEvent(text: string): JobEvent | undefined {
  try {
    const e = JSON.parse(text) as JobEvent;
    if (e.type === 'succeeded') return { ...e, images: reviveImages(e.images as unknown as Wire<StoredImage>[]) };
    return e;
  } catch {
    return undefined;
  }
}
