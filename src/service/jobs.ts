/**
 * @file Job records and their store. A job is one request: `numImages` samples that are admitted, stepped and
 * finished together. The scheduler is the only writer of a job's mutable fields; transports read them.
 */
import { NotFoundError } from './errors.ts';
import type { ImageFormat } from './media/image-codec.ts';
import type { RgbImage } from './pipeline.ts';
import type { GenerationRequest } from './request.ts';

/** Lifecycle: QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELED (QUEUED may go straight to CANCELED). */
export type JobStatus = 'QUEUED' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CANCELED';

/** Statuses after which nothing changes any more. */
export const TERMINAL_STATUSES: readonly JobStatus[] = ['SUCCEEDED', 'FAILED', 'CANCELED'];

/** An image file written to the image store. */
export interface StoredImage {
  /** `<jobId>-<index>`. */
  id: string;
  jobId: string;
  /** Position in the job, 0-based. */
  index: number;
  /** File name inside IMAGE_DIR; the URL path is `/images/<fileName>`. */
  fileName: string;
  format: ImageFormat;
  contentType: string;
  width: number;
  height: number;
  byteSize: number;
  /** Seed of this sample (job seed + index). */
  seed: number;
  createdAt: Date;
}

/**
 * A job's control image while it waits: the pixels the engine reads and the file bytes they were decoded from
 * (what travels to a scale-out worker, which decodes them to the same pixels).
 */
export interface ControlImageData {
  image: RgbImage;
  bytes: Uint8Array;
}

/** One generation request and its progress. */
export interface Job {
  id: string;
  request: GenerationRequest;
  status: JobStatus;
  createdAt: Date;
  startedAt?: Date;
  finishedAt?: Date;
  /** Denoising steps completed by every sample of the job. */
  step: number;
  totalSteps: number;
  /** Mean wall time of one step call this job took part in, for the ETA. */
  meanStepMs?: number;
  /** URL path of the latest preview, when previews were asked for. */
  previewPath?: string;
  images: StoredImage[];
  error?: { code: string; message: string };
  cancelReason?: string;
  /** Set by `cancel` on a running job; the scheduler acts on it at the next step boundary. */
  cancelRequested?: string;
  /**
   * The control image until the engine has it: the scheduler hands it over at admission and drops it then (or when
   * the job ends earlier). Never part of a job record (`redis/codec.ts` leaves it out; it has its own key there).
   */
  controlImage?: ControlImageData;
  /** Whether the request came with a control image (kept after `controlImage` is dropped). */
  hasControlImage?: boolean;
  /**
   * img2img / inpainting: the input image and mask until the engine has them (handed over and dropped at admission,
   * like `controlImage`; never part of a job record).
   */
  editImage?: ControlImageData;
  editMask?: ControlImageData;
  /**
   * The engine batch the job ran in (set at admission): jobs with the same id were stepped together. Batches only
   * hold jobs of one compatibility key (mode, size, steps, LoRA set with strengths).
   */
  batchId?: string;
  /** Name of the API key that made the job (see {@link Caller}); absent when the server has no keys. */
  owner?: string;
  /** JOB_TIMEOUT_S: the job fails with code `timeout` when not finished this long after `createdAt`. */
  timeoutMs?: number;
}

/**
 * Who is asking: the name jobs are recorded under and whether it sees every job (an admin key, AUTH_TOKEN, or a
 * server without keys). Transports resolve it from the bearer token; the service scopes jobs with it.
 */
export interface Caller {
  name: string;
  admin: boolean;
}

/** Whether `caller` may see (and cancel) `job`: admins and internal calls (no caller) see all, others their own. */
export function canAccess(job: Job, caller: Caller | undefined): boolean {
  return caller === undefined || caller.admin || job.owner === caller.name;
}

/** Whether a job has run past its deadline (JOB_TIMEOUT_S). */
export function pastDeadline(job: Job, now = Date.now()): boolean {
  return job.timeoutMs !== undefined && now - job.createdAt.getTime() > job.timeoutMs;
}

/** Whether a job has finished one way or another. */
export function isTerminal(job: Job): boolean {
  return TERMINAL_STATUSES.includes(job.status);
}

/** Milliseconds since the job was submitted (until it finished, once it has). */
export function elapsedMs(job: Job, now = Date.now()): number {
  return (job.finishedAt?.getTime() ?? now) - job.createdAt.getTime();
}

/** Estimated milliseconds until the job's images exist; undefined before a step has been timed. */
export function etaMs(job: Job): number | undefined {
  if (isTerminal(job)) return 0;
  if (job.meanStepMs === undefined) return undefined;
  return job.meanStepMs * (job.totalSteps - job.step);
}

/**
 * In-memory job history, newest last. Finished jobs beyond `maxFinished` are forgotten oldest first (their
 * images stay on disk until the image store's cleanup removes them).
 */
export class JobStore {
  readonly #jobs = new Map<string, Job>();
  readonly #maxFinished: number;

  /** @param maxFinished finished jobs kept for `job(id)` / `jobs`. @default 1000 */
  constructor(maxFinished = 1000) {
    this.#maxFinished = maxFinished;
  }

  add(job: Job): void {
    this.#jobs.set(job.id, job);
  }

  get(id: string): Job | undefined {
    return this.#jobs.get(id);
  }

  /** @throws NotFoundError */
  require(id: string): Job {
    const job = this.#jobs.get(id);
    if (!job) throw new NotFoundError('Job', id);
    return job;
  }

  /** Newest first, optionally only some statuses. */
  list(statuses?: readonly JobStatus[]): Job[] {
    const all = [...this.#jobs.values()].reverse();
    return statuses && statuses.length > 0 ? all.filter((j) => statuses.includes(j.status)) : all;
  }

  /** Called when a job finishes: evicts the oldest finished jobs over the limit. */
  prune(): void {
    let finished = 0;
    for (const j of this.#jobs.values()) if (isTerminal(j)) finished++;
    for (const [id, j] of this.#jobs) {
      if (finished <= this.#maxFinished) break;
      if (isTerminal(j)) {
        this.#jobs.delete(id);
        finished--;
      }
    }
  }
}
