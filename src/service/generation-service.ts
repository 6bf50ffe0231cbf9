/**
 * @file The service facade the transports call: submit, look up, list, cancel and watch jobs; the model
 * catalogue; readiness. It wires the job store, event hub, image store, metrics and the scheduler around one
 * {@link StepExecutor}.
 */
import { randomUUID } from 'node:crypto';
import type { ServiceError } from './errors.ts';
import { ImageStore, type ImageStoreOptions } from './image-store.ts';
import { Channel, type JobEvent, JobEventHub } from './job-events.ts';
import { elapsedMs, etaMs, isTerminal, type Job, type JobStatus, JobStore, type StoredImage } from './jobs.ts';
import { type MeasuredLatency, MeasuredStats } from './measured.ts';
import { createMetrics, type ServerMetrics } from './metrics.ts';
import { type GenerationLimits, ModelCatalog, type ModelEntry } from './models.ts';
import type { StepExecutor } from './pipeline.ts';
import { type GenerateInput, parseGenerateInput } from './request.ts';
import { Scheduler } from './scheduler.ts';

/** How the service is set up. */
export interface GenerationServiceOptions {
  executor: StepExecutor;
  /** Samples per engine batch (MODEL_BATCH). */
  batchSize: number;
  /** Default mode, as its size token (MODEL_SIZE). @default 'original' */
  defaultSize?: string;
  /** @default 20 */
  maxQueueDelayMs?: number;
  /** @default 64 */
  maxQueueSize?: number;
  images: ImageStoreOptions;
  limits?: Partial<GenerationLimits>;
  /** Finished jobs kept in memory. @default 1000 */
  maxFinishedJobs?: number;
  log?: (message: string, err: unknown) => void;
}

/** See the file comment. Create with {@link createGenerationService}. */
export class GenerationService {
  readonly catalog: ModelCatalog;
  readonly metrics: ServerMetrics;
  readonly images: ImageStore;
  readonly #executor: StepExecutor;
  readonly #store: JobStore;
  readonly #events = new JobEventHub();
  readonly #measured = new MeasuredStats();
  readonly #scheduler: Scheduler;
  #closed = false;

  private constructor(options: GenerationServiceOptions, images: ImageStore) {
    this.#executor = options.executor;
    this.images = images;
    this.metrics = createMetrics();
    this.#store = new JobStore(options.maxFinishedJobs);
    this.catalog = new ModelCatalog(options.executor.info(), {
      batchSize: options.batchSize,
      defaultSize: options.defaultSize ?? 'original',
      ...(options.limits ? { limits: options.limits } : {}),
    });
    this.#scheduler = new Scheduler({
      executor: options.executor,
      store: this.#store,
      events: this.#events,
      images,
      metrics: this.metrics,
      measured: this.#measured,
      policy: { maxBatch: options.batchSize, maxQueueDelayMs: options.maxQueueDelayMs ?? 20 },
      maxQueueSize: options.maxQueueSize ?? 64,
      ...(options.log ? { log: options.log } : {}),
    });
  }

  /** @internal use {@link createGenerationService}. */
  static async create(options: GenerationServiceOptions): Promise<GenerationService> {
    return new GenerationService(options, await ImageStore.create(options.images));
  }

  /** Whether the engine is loaded and the scheduler accepts work. */
  isReady(): boolean {
    return !this.#closed;
  }

  /** Every servable model/mode. */
  models(): readonly ModelEntry[] {
    return this.catalog.entries;
  }

  /** What this server measured for a mode. */
  measured(mode: string): MeasuredLatency[] {
    return this.#measured.forMode(mode);
  }

  /**
   * Validates and queues a request; returns the job at once (status QUEUED).
   * @throws ValidationError, UnknownModelError, QueueFullError
   */
  submit(input: GenerateInput): Job {
    try {
      const request = parseGenerateInput(input, this.catalog);
      const job: Job = {
        id: randomUUID(),
        request,
        status: 'QUEUED',
        createdAt: new Date(),
        step: 0,
        totalSteps: request.steps,
        images: [],
      };
      this.#scheduler.submit(job);
      this.#store.add(job);
      return job;
    } catch (err) {
      this.countError(err);
      throw err;
    }
  }

  /** A job, or undefined when unknown or evicted. */
  get(id: string): Job | undefined {
    return this.#store.get(id);
  }

  /** Jobs newest first, optionally filtered by status. */
  list(statuses?: readonly JobStatus[]): Job[] {
    return this.#store.list(statuses);
  }

  /** Images of several jobs at once (the dataloader's batch function). */
  imagesOf(jobIds: readonly string[]): StoredImage[][] {
    return jobIds.map((id) => this.#store.get(id)?.images ?? []);
  }

  /** 1-based queue position, null when not queued. */
  queuePosition(jobId: string): number | null {
    return this.#scheduler.queuePosition(jobId);
  }

  /**
   * Cancels a job; see {@link Scheduler.cancel}. Returns the job (already terminal jobs are returned unchanged).
   * @throws NotFoundError
   */
  cancel(id: string, reason = 'canceled by client'): Job {
    const job = this.#store.require(id);
    this.#scheduler.cancel(job, reason);
    return job;
  }

  /**
   * The job's events: a snapshot first, then live events, ending after the terminal one. Closing the iterator
   * (`return()`) unsubscribes at once.
   * @throws NotFoundError
   */
  watch(id: string): AsyncIterableIterator<JobEvent> {
    const job = this.#store.require(id);
    let stop = () => {};
    const channel = new Channel<JobEvent>(() => stop());
    // Listen before the snapshot: publishing is synchronous, so nothing falls between the two.
    stop = this.#events.listen(id, (e) => {
      channel.push(e);
      if (e.type === 'succeeded' || e.type === 'failed' || e.type === 'canceled') channel.end();
    });
    const eta = etaMs(job);
    channel.push({
      type: 'snapshot',
      job,
      queuePosition: this.queuePosition(id),
      elapsedMs: elapsedMs(job),
      ...(eta !== undefined ? { etaMs: eta } : {}),
    });
    if (isTerminal(job)) {
      channel.push(terminalEvent(job));
      channel.end();
    }
    return channel;
  }

  /** Resolves when the job is terminal (the REST endpoint's synchronous mode). */
  async waitFor(id: string): Promise<Job> {
    const job = this.#store.require(id);
    if (isTerminal(job)) return job;
    for await (const e of this.watch(id)) {
      if (e.type === 'succeeded' || e.type === 'failed' || e.type === 'canceled') break;
    }
    return job;
  }

  /** Counts an error returned to a client, by its code. */
  countError(err: unknown): void {
    const code = (err as Partial<ServiceError>)?.code;
    this.metrics.errors.inc({ code: typeof code === 'string' ? code : 'internal' });
  }

  /** Cancels queued work, stops the scheduler and the executor. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#scheduler.close();
    this.images.close();
    await this.#executor.close();
  }
}

function terminalEvent(job: Job): JobEvent {
  const base = { jobId: job.id, elapsedMs: elapsedMs(job) };
  if (job.status === 'SUCCEEDED') return { type: 'succeeded', ...base, images: job.images };
  if (job.status === 'CANCELED') return { type: 'canceled', ...base, reason: job.cancelReason ?? 'canceled' };
  return { type: 'failed', ...base, code: job.error?.code ?? 'generation_failed', message: job.error?.message ?? '' };
}

/** Creates the service (the image directory is created if needed). */
export function createGenerationService(options: GenerationServiceOptions): Promise<GenerationService> {
  return GenerationService.create(options);
}
