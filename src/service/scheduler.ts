/**
 * @file The scheduler: sole owner of the queue and of the running batch, driving a {@link StepExecutor} one
 * denoising step at a time.
 *
 * NOTE(api): the algorithm, vLLM/TGI style.
 * - State lives here only. Public methods (`submit`, `cancel`) change it synchronously and wake the loop; the
 *   loop is the only caller of the executor, so the executor never sees two calls at once.
 * - Each turn of the loop: drop cancelled running jobs (release their handles; the other samples of the batch are
 *   untouched, since every sample carries its own latents and timestep), ask the pure policy in `batcher.ts`
 *   what to admit, `prepare` the admitted jobs (which then join at step 0 while others are mid-way), run one
 *   `step` over every running handle, publish one event per job, and `decode` the jobs that reached their last
 *   step. Encoding and writing the images runs off the loop so the next step is not delayed.
 * - A queued job is cancelled at once; a running one at the next step boundary. Engine errors fail the jobs of
 *   the failing call only; the loop goes on.
 * - Modes are warmed off this loop ({@link ModeWarmup}): the policy sees only the queued jobs of ready modes, so a
 *   job whose mode is still compiling waits in the queue without holding back the jobs (and batches) of ready ones.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { type BatchPolicy, batchKey, nextBatch, type QueueEntry } from './batcher.ts';
import { failureCodeOf, JobTimeoutError, QueueFullError } from './errors.ts';
import type { ImageStore } from './image-store.ts';
import { finishJob, type JobEventHub, type TerminalJobEvent } from './job-events.ts';
import { logJobTransition, type ServiceLogger } from './job-log.ts';
import { elapsedMs, etaMs, isTerminal, type Job, type JobStore, pastDeadline } from './jobs.ts';
import type { MeasuredStats } from './measured.ts';
import type { ServerMetrics } from './metrics.ts';
import { type ModeState, ModeWarmup } from './mode-warmup.ts';
import type { SampleHandle, SampleRequest, StepExecutor } from './pipeline.ts';

/** What the scheduler needs. */
export interface SchedulerOptions {
  executor: StepExecutor;
  store: JobStore;
  events: JobEventHub;
  images: ImageStore;
  metrics: ServerMetrics;
  measured: MeasuredStats;
  policy: BatchPolicy;
  /** Queued jobs (not counting running ones) beyond which `submit` throws {@link QueueFullError}. */
  maxQueueSize: number;
  /** Where unexpected errors go. @default console.error */
  log?: (message: string, err: unknown) => void;
  /** Modes to warm in the background from the start, in order (the default mode first). Others warm on demand. */
  warmModes?: readonly string[];
  /** Gets one line per job start and end (`job-log.ts`). */
  logger?: ServiceLogger;
}

/** A queued job as the scheduler keeps it: the policy's entry plus the mode it waits for. */
type Queued = QueueEntry & { mode: string };

interface RunningJob {
  job: Job;
  key: string;
  handles: SampleHandle[];
  steps: number;
}

/** See the file comment. */
export class Scheduler {
  readonly #o: SchedulerOptions;
  readonly #queue: Queued[] = [];
  readonly #running = new Map<string, RunningJob>();
  #runningKey: string | null = null;
  /** Id of the running batch (`<scheduler>-<n>`), recorded on each job it admits. */
  #runningBatch: string | null = null;
  readonly #schedulerId = randomUUID().slice(0, 8);
  #batches = 0;
  #wake: (() => void) | undefined;
  #closed = false;
  readonly #loop: Promise<void>;
  readonly #background = new Set<Promise<void>>();
  #meanStepMs = 0;
  readonly #warmup: ModeWarmup;

  constructor(options: SchedulerOptions) {
    this.#o = options;
    this.#warmup = new ModeWarmup(options.executor, {
      ready: () => this.#wake?.(),
      failed: (mode, err) => this.#failQueued(mode, err),
    });
    this.#warmup.warm(options.warmModes ?? []);
    this.#loop = this.#run();
  }

  /** Whether `mode`'s engine is warm (its jobs can be admitted). */
  isModeReady(mode: string): boolean {
    return this.#warmup.isReady(mode);
  }

  /** The warm-up state of every mode it has seen. */
  modeStates(): Record<string, ModeState> {
    return this.#warmup.states();
  }

  /**
   * Queues a job (status QUEUED).
   * @throws QueueFullError when `maxQueueSize` jobs already wait.
   */
  submit(job: Job): void {
    if (this.#closed) throw new Error('scheduler is closed');
    if (this.#queue.length >= this.#o.maxQueueSize) {
      const eta = (this.#meanStepMs * job.totalSteps) / 1000;
      throw new QueueFullError(this.#o.maxQueueSize, Math.max(1, Math.ceil(eta)));
    }
    const r = job.request;
    this.#warmup.request(r.model.mode);
    this.#queue.push({
      jobId: job.id,
      mode: r.model.mode,
      key: batchKey({
        mode: r.model.mode,
        width: r.width,
        height: r.height,
        steps: r.steps,
        ...(r.loras ? { loras: r.loras } : {}),
        ...(r.edit ? { edit: `${r.edit}@${r.strength}` } : {}),
        ...(r.trueCfgScale !== undefined ? { trueCfg: r.trueCfgScale } : {}),
      }),
      samples: r.numImages,
      enqueuedAt: job.createdAt.getTime(),
    });
    this.#gauges();
    this.#wake?.();
  }

  /**
   * Cancels a job: a queued one leaves the queue now; a running one leaves its batch at the next step boundary.
   * @returns false when the job had already finished.
   */
  cancel(job: Job, reason: string): boolean {
    if (isTerminal(job)) return false;
    const i = this.#queue.findIndex((e) => e.jobId === job.id);
    if (i >= 0) {
      this.#queue.splice(i, 1);
      this.#gauges();
      this.#finish(job, 'CANCELED', { reason });
    } else {
      job.cancelRequested ??= reason;
    }
    this.#wake?.();
    return true;
  }

  /** 1-based position in the queue, or null when not queued. */
  queuePosition(jobId: string): number | null {
    const i = this.#queue.findIndex((e) => e.jobId === jobId);
    return i < 0 ? null : i + 1;
  }

  /** Jobs waiting. */
  get queueDepth(): number {
    return this.#queue.length;
  }

  /** Cancels everything queued, lets the running step finish, and stops the loop. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#warmup.close();
    for (const e of this.#queue.splice(0)) {
      const job = this.#o.store.get(e.jobId);
      if (job) this.#finish(job, 'CANCELED', { reason: 'server shutting down' });
    }
    this.#wake?.();
    await this.#loop;
    for (const r of this.#running.values()) {
      this.#finish(r.job, 'CANCELED', { reason: 'server shutting down' });
    }
    this.#running.clear();
    await Promise.allSettled([...this.#background]);
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      try {
        await this.#turn();
      } catch (err) {
        // A bug here must not stop the server from serving: log, fail what runs, and keep going.
        this.#log('scheduler turn failed', err);
        await this.#failRunning(err);
      }
    }
  }

  async #turn(): Promise<void> {
    this.#expireQueued();
    await this.#dropCancelled();
    const running =
      this.#running.size > 0 && this.#runningKey ? { key: this.#runningKey, samples: this.#samples() } : null;
    // Jobs of modes still warming stay queued, invisible to the policy (see the file comment).
    const ready = this.#queue.filter((e) => this.#warmup.isReady(e.mode));
    const decision = nextBatch(ready, running, this.#o.policy, Date.now());
    if (decision.kind === 'admit') {
      if (running) this.#o.metrics.joins.inc(decision.jobIds.length);
      else {
        this.#o.metrics.batches.inc();
        this.#runningBatch = `${this.#schedulerId}-${++this.#batches}`;
      }
      await this.#admit(decision.jobIds);
    } else if (!running) {
      await this.#sleep(decision.kind === 'wait' ? decision.untilMs - Date.now() : undefined);
      return;
    }
    if (this.#running.size > 0) await this.#step();
  }

  async #admit(jobIds: string[]): Promise<void> {
    const admitted: { job: Job; key: string; requests: SampleRequest[] }[] = [];
    for (const id of jobIds) {
      const i = this.#queue.findIndex((e) => e.jobId === id);
      const entry = this.#queue[i];
      const job = this.#o.store.get(id);
      if (i < 0 || !entry || !job) continue;
      this.#queue.splice(i, 1);
      const r = job.request;
      const control = job.controlImage?.image;
      const image = job.editImage?.image;
      const mask = job.editMask?.image;
      // The engine has them from here on (a worker executor takes the buffers over): the job no longer holds them.
      delete job.controlImage;
      delete job.editImage;
      delete job.editMask;
      job.status = 'RUNNING';
      job.startedAt = new Date();
      if (this.#runningBatch) job.batchId = this.#runningBatch;
      this.#o.metrics.queueWaitSeconds.observe((Date.now() - job.createdAt.getTime()) / 1000);
      const requests = Array.from({ length: r.numImages }, (_, k) => ({
        prompt: r.prompt,
        width: r.width,
        height: r.height,
        steps: r.steps,
        guidanceScale: r.guidanceScale,
        // Sample k of a job is the same image as a single-image request with seed + k.
        seed: (r.seed + k) >>> 0,
        mode: r.model.mode,
        // The job's own set; absent (only for jobs recorded before LoRA support) means the engine's default set.
        ...(r.loras ? { loras: r.loras } : {}),
        // One image object for every sample of the job: it crosses to the engine process once.
        ...(control ? { controlImage: control } : {}),
        ...(image ? { image, strength: r.strength } : {}),
        ...(mask ? { mask } : {}),
        ...(r.trueCfgScale !== undefined ? { negativePrompt: r.negativePrompt, trueCfgScale: r.trueCfgScale } : {}),
      }));
      admitted.push({ job, key: entry.key, requests });
      logJobTransition(this.#o.logger, job, 'started');
      this.#o.events.publish(job.id, {
        type: 'started',
        jobId: job.id,
        totalSteps: job.totalSteps,
        elapsedMs: elapsedMs(job),
      });
    }
    this.#gauges();
    if (admitted.length === 0) return;
    let handles: SampleHandle[];
    try {
      handles = await this.#o.executor.prepare(admitted.flatMap((a) => a.requests));
    } catch (err) {
      for (const a of admitted) this.#finish(a.job, 'FAILED', { err });
      return;
    }
    let offset = 0;
    for (const a of admitted) {
      const own = handles.slice(offset, offset + a.requests.length);
      offset += a.requests.length;
      this.#running.set(a.job.id, { job: a.job, key: a.key, handles: own, steps: 0 });
      this.#runningKey = a.key;
    }
    this.#gauges();
  }

  async #step(): Promise<void> {
    const batch = [...this.#running.values()];
    const handles = batch.flatMap((r) => r.handles);
    const preview = batch.some((r) => r.job.request.preview);
    const t0 = performance.now();
    let results: Awaited<ReturnType<StepExecutor['step']>>;
    try {
      results = await this.#o.executor.step(handles, { preview });
    } catch (err) {
      await this.#failRunning(err);
      return;
    }
    const ms = performance.now() - t0;
    this.#meanStepMs = this.#meanStepMs === 0 ? ms : 0.9 * this.#meanStepMs + 0.1 * ms;
    this.#o.metrics.stepSeconds.observe(ms / 1000);
    this.#o.metrics.stepBatchSize.observe(handles.length);
    const byHandle = new Map(results.map((r) => [r.handle, r]));

    await Promise.all(
      batch.map(async (r) => {
        const own = r.handles.map((h) => byHandle.get(h));
        const job = r.job;
        job.step = Math.min(...own.map((x) => x?.step ?? job.step));
        r.steps++;
        job.meanStepMs = job.meanStepMs === undefined ? ms : job.meanStepMs + (ms - job.meanStepMs) / r.steps;
        const img = own[0]?.preview;
        if (job.request.preview && img && this.#o.events.listenerCount(job.id) > 0) {
          job.previewPath = await this.#o.images.savePreview(job.id, job.step, img).catch(() => job.previewPath);
        }
        this.#o.events.publish(job.id, {
          type: 'step',
          jobId: job.id,
          step: job.step,
          totalSteps: job.totalSteps,
          elapsedMs: elapsedMs(job),
          etaMs: etaMs(job),
          ...(job.request.preview && job.previewPath ? { previewPath: job.previewPath } : {}),
        });
      }),
    );

    const done = batch.filter((r) => r.job.step >= r.job.totalSteps);
    if (done.length > 0) await this.#decode(done);
  }

  async #decode(done: RunningJob[]): Promise<void> {
    for (const r of done) this.#running.delete(r.job.id);
    this.#afterRemoval();
    const handles = done.flatMap((r) => r.handles);
    let images: Awaited<ReturnType<StepExecutor['decode']>>;
    try {
      images = await this.#o.executor.decode(handles);
    } catch (err) {
      for (const r of done) this.#finish(r.job, 'FAILED', { err });
      await this.#release(handles);
      return;
    }
    await this.#release(handles);
    let offset = 0;
    for (const r of done) {
      const own = images.slice(offset, offset + r.handles.length);
      offset += r.handles.length;
      // Encoding is CPU work in libuv's pool; keep it off the step loop.
      this.#track(this.#store(r, own));
    }
  }

  async #store(r: RunningJob, rgbs: Awaited<ReturnType<StepExecutor['decode']>>): Promise<void> {
    const job = r.job;
    const req = job.request;
    try {
      const encoding = { format: req.outputFormat, ...(req.quality !== undefined ? { quality: req.quality } : {}) };
      job.images = await Promise.all(
        rgbs.map((rgb, k) => this.#o.images.save(job.id, k, (req.seed + k) >>> 0, rgb, encoding)),
      );
      if (job.cancelRequested) {
        // Cancelled after its last step: the result exists, but the client asked not to have it.
        this.#finish(job, 'CANCELED', { reason: job.cancelRequested });
        return;
      }
      this.#finish(job, 'SUCCEEDED', {});
      const start = job.startedAt?.getTime() ?? job.createdAt.getTime();
      this.#o.measured.record({
        mode: req.model.mode,
        width: req.width,
        height: req.height,
        steps: req.steps,
        seconds: ((job.finishedAt?.getTime() ?? Date.now()) - start) / 1000,
        stepMs: job.meanStepMs ?? 0,
      });
    } catch (err) {
      this.#finish(job, 'FAILED', { err });
    }
  }

  /** Fails queued jobs past their deadline (JOB_TIMEOUT_S); running ones leave in {@link #dropCancelled}. */
  #expireQueued(): void {
    const now = Date.now();
    for (const e of [...this.#queue]) {
      const job = this.#o.store.get(e.jobId);
      if (!job || !pastDeadline(job, now)) continue;
      this.#queue.splice(this.#queue.indexOf(e), 1);
      this.#finish(job, 'FAILED', { err: new JobTimeoutError(job.id, job.timeoutMs ?? 0) });
    }
    this.#gauges();
  }

  /** Drops running jobs that were cancelled or ran past their deadline, at a step boundary. */
  async #dropCancelled(): Promise<void> {
    const now = Date.now();
    const gone = [...this.#running.values()].filter((r) => r.job.cancelRequested || pastDeadline(r.job, now));
    if (gone.length === 0) return;
    for (const r of gone) {
      this.#running.delete(r.job.id);
      if (r.job.cancelRequested) this.#finish(r.job, 'CANCELED', { reason: r.job.cancelRequested });
      else this.#finish(r.job, 'FAILED', { err: new JobTimeoutError(r.job.id, r.job.timeoutMs ?? 0) });
    }
    this.#afterRemoval();
    await this.#release(gone.flatMap((r) => r.handles));
  }

  /** A mode's warm-up failed: the jobs queued for it fail with that error (a later request warms it again). */
  #failQueued(mode: string, err: unknown): void {
    for (const e of this.#queue.filter((q) => q.mode === mode)) {
      this.#queue.splice(this.#queue.indexOf(e), 1);
      const job = this.#o.store.get(e.jobId);
      if (job) this.#finish(job, 'FAILED', { err });
    }
    this.#gauges();
    this.#wake?.();
  }

  async #failRunning(err: unknown): Promise<void> {
    const all = [...this.#running.values()];
    this.#running.clear();
    this.#afterRemoval();
    for (const r of all) this.#finish(r.job, 'FAILED', { err });
    await this.#release(all.flatMap((r) => r.handles));
  }

  async #release(handles: SampleHandle[]): Promise<void> {
    if (handles.length === 0) return;
    await this.#o.executor.release(handles).catch((err) => this.#log('release failed', err));
  }

  #finish(job: Job, status: 'SUCCEEDED' | 'FAILED' | 'CANCELED', extra: { reason?: string; err?: unknown }): void {
    if (isTerminal(job)) return;
    delete job.controlImage; // a queued job cancelled or failed: the pixels are not needed any more
    delete job.editImage;
    delete job.editMask;
    const m = this.#o.metrics;
    let event: TerminalJobEvent;
    if (status === 'FAILED') {
      const message = extra.err instanceof Error ? extra.err.message : String(extra.err);
      // Typed failures (a LoRA the engine refused, a deadline) keep their code; anything else is generation_failed.
      const code = failureCodeOf(extra.err);
      event = finishJob(job, { status, code, message });
      m.errors.inc({ code });
      if (code === 'generation_failed') this.#log(`job ${job.id} failed`, extra.err);
    } else {
      event = finishJob(job, status === 'CANCELED' ? { status, reason: extra.reason ?? 'canceled' } : { status });
    }
    m.jobs.inc({ status });
    m.jobLatencySeconds.observe({ status }, elapsedMs(job) / 1000);
    this.#o.events.publish(job.id, event);
    logJobTransition(
      this.#o.logger,
      job,
      status === 'SUCCEEDED' ? 'succeeded' : status === 'FAILED' ? 'failed' : 'canceled',
    );
    this.#o.store.prune();
  }

  #afterRemoval(): void {
    if (this.#running.size === 0) {
      this.#runningKey = null;
      this.#runningBatch = null;
    }
    this.#gauges();
  }

  #samples(): number {
    let n = 0;
    for (const r of this.#running.values()) n += r.handles.length;
    return n;
  }

  #gauges(): void {
    this.#o.metrics.queueDepth.set(this.#queue.length);
    this.#o.metrics.runningSamples.set(this.#samples());
  }

  #sleep(ms: number | undefined): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => done(), Math.max(0, ms));
      const done = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      this.#wake = done;
    });
  }

  #track(p: Promise<void>): void {
    this.#background.add(p);
    void p.finally(() => this.#background.delete(p));
  }

  #log(message: string, err: unknown): void {
    (this.#o.log ?? ((m, e) => console.error(`[fluxql] ${m}:`, e)))(message, err);
  }
}
