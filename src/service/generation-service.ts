/**
 * @file The service facade the transports call: submit, look up, list, cancel and watch jobs; the model
 * catalogue; readiness. It works over the {@link JobBackend} ports: in memory around one {@link StepExecutor}
 * (single process, `local-backend.ts`) or over Redis (scale-out API node, `redis/api-backend.ts`).
 */
import { randomUUID } from 'node:crypto';
import {
  LoraRequestError,
  NotFoundError,
  type ServiceError,
  ServiceUnavailableError,
  ValidationError,
} from './errors.ts';
import { ImageStore, type ImageStoreOptions } from './image-store.ts';
import { Channel, isTerminalEvent, type JobEvent, terminalEvent } from './job-events.ts';
import { logJobTransition, type ServiceLogger } from './job-log.ts';
import {
  type Caller,
  type ControlImageData,
  canAccess,
  elapsedMs,
  etaMs,
  isTerminal,
  type Job,
  type JobStatus,
  type StoredImage,
} from './jobs.ts';
import { createLocalBackend } from './local-backend.ts';
import { type MeasuredLatency, MeasuredStats } from './measured.ts';
import { type ControlImageOptions, loadControlImageSource } from './media/control-image.ts';
import { createMetrics, type ServerMetrics } from './metrics.ts';
import { type ModeResults, readModeResults } from './mode-results.ts';
import type { WarmModes } from './mode-warmup.ts';
import { type GenerationLimits, ModelCatalog, type ModelEntry } from './models.ts';
import {
  ControlImageError,
  type ExecutorCapabilities,
  editStepsRun,
  type LoraInfo,
  type LoraScan,
  type LoraSelection,
  type PlanLayer,
  type RgbImage,
  type StepExecutor,
} from './pipeline.ts';
import type { BackendHealth, EngineOffer, JobBackend, LoraControl } from './ports.ts';
import {
  type GenerateInput,
  type GenerationRequest,
  loraName,
  loraStrength,
  MAX_CONTROL_IMAGE_BYTES,
  MAX_CONTROL_IMAGE_PIXELS,
  parseGenerateInput,
} from './request.ts';

/** How long the engine's per-layer plans are reused before `models` asks the engine again. */
const PLAN_LAYERS_TTL_MS = 3000;
/** How long `models` waits for a busy engine's answer about the plans before showing the last one it has. */
const PLAN_LAYERS_WAIT_MS = 500;

/** Options of both modes. */
interface CommonOptions {
  /** Default mode, as its size token (MODEL_SIZE); scale-out takes it from the workers. @default 'original' */
  defaultSize?: string;
  images: ImageStoreOptions;
  limits?: Partial<GenerationLimits>;
  /** How `controlImage` values are loaded. */
  controlImages?: ControlImageSettings;
  /**
   * The mode benchmark's result file (`bench/results/modes.json`, MODES_RESULTS), read once here: its latency,
   * quality and plan rows for the served model appear in `models`. Missing or malformed: no rows.
   */
  modeResults?: string;
  /** JOB_TIMEOUT_S in ms: a job not finished this long after submission fails with code `timeout`. */
  jobTimeoutMs?: number;
  log?: (message: string, err: unknown) => void;
  /** Gets one line per job transition (`job-log.ts`): `queued` here, the others from the scheduler. */
  logger?: ServiceLogger;
}

/** Who submits, and a signal that withdraws the request while it is still being loaded (a client that left). */
export interface SubmitOptions {
  caller?: Caller;
  signal?: AbortSignal;
}

/** How a drain ended (see {@link GenerationService.drain}). */
export interface DrainResult {
  /** Jobs that were queued or running when the drain began and finished on their own. */
  finished: number;
  /** Jobs cancelled because the grace period ran out. */
  canceled: number;
}

/** Limits of control image loading (see `media/control-image.ts`). */
export interface ControlImageSettings {
  /**
   * Fetch URLs whose host is or resolves to a loopback, private, link-local, CGNAT or unique-local address
   * (CONTROL_IMAGE_ALLOW_PRIVATE_URLS). Off by default: such URLs would let clients probe the server's network.
   * @default false
   */
  allowPrivateUrls?: boolean;
  /** @default {@link MAX_CONTROL_IMAGE_BYTES} */
  maxBytes?: number;
  /** @default {@link MAX_CONTROL_IMAGE_PIXELS} */
  maxPixels?: number;
  /** Whole download time of a URL. @default 10 000 ms */
  timeoutMs?: number;
}

/** What a scale-out backend factory gets from the service. */
export interface BackendDeps {
  images: ImageStore;
  metrics: ServerMetrics;
  measured: MeasuredStats;
  logger?: ServiceLogger;
}

/** How the service is set up: over one local executor (single process) or over a backend (scale-out). */
export type GenerationServiceOptions = CommonOptions &
  (
    | {
        executor: StepExecutor;
        /** Samples per engine batch (MODEL_BATCH). */
        batchSize: number;
        /** @default 20 */
        maxQueueDelayMs?: number;
        /** @default 64 */
        maxQueueSize?: number;
        /** Finished jobs kept in memory. @default 1000 */
        maxFinishedJobs?: number;
        /** Modes warmed in the background from the start besides the default one (WARM_MODES). @default 'all' */
        warmModes?: WarmModes;
      }
    | { backend: (deps: BackendDeps) => JobBackend | Promise<JobBackend> }
  );

/** See the file comment. Create with {@link createGenerationService}. */
export class GenerationService {
  readonly metrics: ServerMetrics;
  readonly images: ImageStore;
  readonly #backend: JobBackend;
  readonly #measured: MeasuredStats;
  readonly #limits: Partial<GenerationLimits> | undefined;
  readonly #modeResults: ModeResults | undefined;
  readonly #controlImages: ControlImageOptions;
  #catalog: { offer: EngineOffer; catalog: ModelCatalog } | undefined;
  readonly #log: ((message: string, err: unknown) => void) | undefined;
  readonly #logger: ServiceLogger | undefined;
  /** The engine's per-layer plans by mode (`refreshPlanLayers`), when last read and the read under way. */
  #planLayers: { byMode: Record<string, PlanLayer[]>; at: number; pending?: Promise<void> } = { byMode: {}, at: 0 };
  #closed = false;
  /** Set by {@link startDrain}: no new jobs. */
  #draining = false;
  /** Whether jobs run in this process (single process), so a drain waits for them. */
  readonly #runsJobs: boolean;
  readonly #jobTimeoutMs: number | undefined;

  private constructor(backend: JobBackend, deps: BackendDeps, options: CommonOptions, runsJobs: boolean) {
    this.#backend = backend;
    this.#runsJobs = runsJobs;
    this.#jobTimeoutMs = options.jobTimeoutMs;
    this.images = deps.images;
    this.metrics = deps.metrics;
    this.#measured = deps.measured;
    this.#limits = options.limits;
    this.#log = options.log;
    this.#logger = options.logger;
    this.#modeResults = options.modeResults
      ? readModeResults(options.modeResults, (message) => options.log?.(message, undefined))
      : undefined;
    const c = options.controlImages ?? {};
    this.#controlImages = {
      maxBytes: c.maxBytes ?? MAX_CONTROL_IMAGE_BYTES,
      maxPixels: c.maxPixels ?? MAX_CONTROL_IMAGE_PIXELS,
      allowPrivateAddresses: c.allowPrivateUrls === true,
      ...(c.timeoutMs !== undefined ? { timeoutMs: c.timeoutMs } : {}),
    };
  }

  /** @internal use {@link createGenerationService}. */
  static async create(options: GenerationServiceOptions): Promise<GenerationService> {
    const images = await ImageStore.create(options.images);
    const deps: BackendDeps = {
      images,
      metrics: createMetrics(),
      measured: new MeasuredStats(),
      ...(options.logger ? { logger: options.logger } : {}),
    };
    const backend =
      'executor' in options
        ? createLocalBackend({
            executor: options.executor,
            batchSize: options.batchSize,
            defaultSize: options.defaultSize ?? 'original',
            maxQueueDelayMs: options.maxQueueDelayMs ?? 20,
            maxQueueSize: options.maxQueueSize ?? 64,
            ...(options.maxFinishedJobs !== undefined ? { maxFinishedJobs: options.maxFinishedJobs } : {}),
            ...(options.warmModes !== undefined ? { warmModes: options.warmModes } : {}),
            ...deps,
            ...(options.log ? { log: options.log } : {}),
          })
        : await options.backend(deps);
    const service = new GenerationService(backend, deps, options, 'executor' in options);
    try {
      // Fail at startup, not on the first request, when MODEL_SIZE names a mode the engine lacks.
      if (backend.offer()) void service.catalog;
    } catch (err) {
      await service.close();
      throw err;
    }
    return service;
  }

  /**
   * The model catalogue, rebuilt when the engines' offer changes.
   * @throws ServiceUnavailableError while no engine is known (scale-out: no worker registered yet)
   */
  get catalog(): ModelCatalog {
    const offer = this.#backend.offer();
    if (!offer) throw new ServiceUnavailableError('No engine worker has registered yet; retry shortly');
    if (this.#catalog?.offer !== offer) {
      const catalog = new ModelCatalog(offer.info, {
        batchSize: offer.batchSize,
        defaultSize: offer.defaultSize,
        ...(this.#limits ? { limits: this.#limits } : {}),
        ...(this.#modeResults ? { modeResults: this.#modeResults } : {}),
      });
      this.#catalog = { offer, catalog };
    }
    return this.#catalog.catalog;
  }

  /** Whether the engine is reachable and the service accepts work. */
  isReady(): boolean {
    return this.health().ready;
  }

  /** Readiness, with the reason when not ready. */
  health(): BackendHealth {
    if (this.#closed) return { ready: false, reason: 'shutting down' };
    if (this.#draining) return { ready: false, reason: 'draining: finishing accepted jobs before shutting down' };
    return this.#backend.health();
  }

  /** Whether {@link startDrain} was called: new jobs are refused. */
  get draining(): boolean {
    return this.#draining || this.#closed;
  }

  /** Stops accepting jobs: `submit` throws ServiceUnavailableError from now on, and readiness turns false. */
  startDrain(): void {
    this.#draining = true;
  }

  /**
   * Graceful shutdown, first half: stops accepting, lets the jobs queued or running in this process finish for at
   * most `graceMs`, then cancels what is left with a reason that says so, and waits (briefly) for the running ones
   * to stop at their next step. A scale-out API node runs no jobs: it only stops accepting.
   */
  async drain(graceMs: number): Promise<DrainResult> {
    this.startDrain();
    if (!this.#runsJobs) return { finished: 0, canceled: 0 };
    const open = () => this.#backend.jobs.list(['QUEUED', 'RUNNING']);
    const initial = (await open()).length;
    const deadline = Date.now() + graceMs;
    let left = await open();
    while (left.length > 0 && Date.now() < deadline) {
      await sleep(Math.min(100, Math.max(1, deadline - Date.now())));
      left = await open();
    }
    const reason = `server shutting down: not finished within SHUTDOWN_GRACE_S (${graceMs / 1000} s)`;
    for (const job of left) await this.#backend.queue.cancel(job, reason);
    // Running jobs stop at their next step boundary; do not wait forever on a stuck engine.
    const stopBy = Date.now() + 10_000;
    while ((await open()).length > 0 && Date.now() < stopBy) await sleep(50);
    return { finished: initial - left.length, canceled: left.length };
  }

  /**
   * Every servable model/mode (none while no engine is known); a planned mode's `plan.layers` holds the engine's
   * per-layer plan as last read by {@link refreshPlanLayers} (empty until then, or without a local engine).
   */
  models(): readonly ModelEntry[] {
    if (!this.#backend.offer()) return [];
    const byMode = this.#planLayers.byMode;
    return this.catalog.entries.map((e) =>
      e.plan && byMode[e.mode] ? { ...e, plan: { ...e.plan, layers: byMode[e.mode] ?? [] } } : e,
    );
  }

  /**
   * Re-reads the engine's per-layer plans (cached or compiled ones only; the engine never plans for this) when the
   * last read is older than a few seconds. Waits at most half a second for a busy engine; the read then finishes
   * in the background and a later call shows it. Does nothing without a local engine (scale-out API node).
   */
  async refreshPlanLayers(): Promise<void> {
    const backend = this.#backend;
    const state = this.#planLayers;
    if (!backend.modePlans || this.#closed || (state.at > 0 && Date.now() - state.at < PLAN_LAYERS_TTL_MS)) return;
    state.pending ??= backend
      .modePlans()
      .then(
        (byMode) => {
          state.byMode = byMode;
        },
        (err) => this.#log?.('could not read the per-layer plans of the modes', err),
      )
      .finally(() => {
        state.at = Date.now();
        state.pending = undefined;
      });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      state.pending,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, PLAN_LAYERS_WAIT_MS);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
  }

  /** What this server measured for a mode. */
  measured(mode: string): MeasuredLatency[] {
    return this.#measured.forMode(mode);
  }

  /**
   * Validates and queues a request; resolves with the job (status QUEUED). A control image is loaded here (decoded,
   * URLs fetched), so a bad one is a ValidationError on `controlImage`, never a failed job.
   * @throws ValidationError, UnknownModelError, QueueFullError, ServiceUnavailableError, LoraRequestError
   */
  async submit(input: GenerateInput, options: SubmitOptions = {}): Promise<Job> {
    try {
      this.#refuseWhileDraining();
      const parsed = parseGenerateInput(input, this.catalog);
      const source = input.controlImage ?? undefined; // a validated string by now
      checkCapabilities(this.catalog.capabilities, parsed, source !== undefined);
      const request: GenerationRequest = { ...parsed, loras: await this.#lorasOf(parsed) };
      this.#checkControlPresence(request.loras ?? [], source !== undefined);
      const controlImage = source === undefined ? undefined : await this.#loadControlImage(source, options.signal);
      const editImage = input.image ? await this.#loadControlImage(input.image, options.signal, 'image') : undefined;
      const editMask = input.mask ? await this.#loadControlImage(input.mask, options.signal, 'mask') : undefined;
      if (editImage && editMask) checkMaskSize(editImage.image, editMask.image);
      // The client left while its request was loading (a control image download): it gets no job.
      options.signal?.throwIfAborted();
      this.#refuseWhileDraining();
      const job: Job = {
        id: randomUUID(),
        request,
        status: 'QUEUED',
        createdAt: new Date(),
        step: 0,
        // img2img / inpainting run only the last `strength` share of the schedule (diffusers' get_timesteps).
        totalSteps: request.strength !== undefined ? editStepsRun(request.steps, request.strength) : request.steps,
        images: [],
        ...(controlImage ? { controlImage, hasControlImage: true } : {}),
        ...(editImage ? { editImage } : {}),
        ...(editMask ? { editMask } : {}),
        ...(options.caller ? { owner: options.caller.name } : {}),
        ...(this.#jobTimeoutMs !== undefined ? { timeoutMs: this.#jobTimeoutMs } : {}),
      };
      await this.#backend.queue.enqueue(job);
      logJobTransition(this.#logger, job, 'queued');
      return job;
    } catch (err) {
      this.countError(err);
      throw err;
    }
  }

  /**
   * The LoRA set a job runs with: the request's own (validated, names made canonical) or, when it gives none, the
   * server-wide default set as it is now. Scale-out API nodes have no engine to ask: there a set is passed on as
   * given (the worker refuses bad files when it prepares the job) and there is no default set.
   * @throws LoraRequestError
   */
  async #lorasOf(request: GenerationRequest): Promise<LoraSelection[]> {
    const control = this.#backend.loras;
    if (request.loras === undefined) return control?.defaults() ?? [];
    if (!control || request.loras.length === 0) return request.loras;
    return control.check(request.loras, request.model.mode);
  }

  /**
   * A control image exactly when the set holds a BFL Control LoRA, as the engine will require. Where the set's
   * metadata is unknown (scale-out API nodes) the engine checks it when it prepares the job.
   * @throws ValidationError (`controlImage`, code `missing` or `unexpected`)
   */
  #checkControlPresence(set: readonly LoraSelection[], given: boolean): void {
    const needs = set.length === 0 ? false : this.#backend.loras?.needsControlImage(set);
    if (needs === true && !given) {
      throw new ValidationError(
        'controlImage',
        'the LoRA set holds a BFL Control LoRA, which needs a control image',
        'missing',
      );
    }
    if (needs === false && given) {
      throw new ValidationError(
        'controlImage',
        'a control image needs a BFL Control LoRA (e.g. FLUX.1-Canny-dev-lora) in the LoRA set',
        'unexpected',
      );
    }
  }

  /** Decodes (and for URLs, downloads) a control image. @throws ValidationError on `controlImage` with its code */
  async #loadControlImage(source: string, signal?: AbortSignal, field = 'controlImage'): Promise<ControlImageData> {
    try {
      const { image, bytes } = await loadControlImageSource(source, {
        ...this.#controlImages,
        ...(signal ? { signal } : {}),
      });
      return { image, bytes };
    } catch (err) {
      if (err instanceof ControlImageError) throw new ValidationError(field, err.message, err.code);
      throw err;
    }
  }

  /**
   * Every LoRA file in LORA_DIR (valid ones with their metadata, invalid ones with the reason) and the default set.
   * @throws LoraRequestError (`unsupported` where this node has no engine)
   */
  async loras(): Promise<LoraScan & { active: LoraSelection[] }> {
    const control = this.#loraControl();
    return { ...(await control.scan()), active: control.defaults() };
  }

  /** The server-wide default set, in load order (`[]` where this node has no engine). */
  activeLoras(): LoraSelection[] {
    return this.#backend.loras?.defaults() ?? [];
  }

  /**
   * Adds a LoRA to the server-wide default set, or changes its strength; later requests without `loras` use it.
   * @throws ValidationError (`name`, `strength`), LoraRequestError; the default set is unchanged on error
   */
  async loadLora(name: string, strength = 1): Promise<LoraInfo> {
    try {
      checkLoraName(name);
      const s = loraStrength().safeParse(strength);
      if (!s.success) throw new ValidationError('strength', s.error.issues[0]?.message ?? 'invalid strength');
      return await this.#loraControl().load(name, s.data);
    } catch (err) {
      this.countError(err);
      throw err;
    }
  }

  /**
   * Removes a LoRA from the server-wide default set; false when it was not in it.
   * @throws ValidationError (`name`), LoraRequestError
   */
  async unloadLora(name: string): Promise<boolean> {
    try {
      checkLoraName(name);
      return await this.#loraControl().unload(name);
    } catch (err) {
      this.countError(err);
      throw err;
    }
  }

  #loraControl(): LoraControl {
    const control = this.#backend.loras;
    if (!control) {
      throw new LoraRequestError(
        'unsupported',
        'LoRA management needs an engine: this API node has none (scale-out); per-request loras still work',
      );
    }
    return control;
  }

  /** A job, or undefined when unknown, evicted, or not `caller`'s (see {@link canAccess}). */
  async get(id: string, caller?: Caller): Promise<Job | undefined> {
    const job = await this.#backend.jobs.get(id);
    return job && canAccess(job, caller) ? job : undefined;
  }

  /** Jobs newest first, optionally filtered by status; only `caller`'s own unless it is an admin. */
  async list(statuses?: readonly JobStatus[], caller?: Caller): Promise<Job[]> {
    const jobs = await this.#backend.jobs.list(statuses);
    return caller && !caller.admin ? jobs.filter((j) => canAccess(j, caller)) : jobs;
  }

  /** Images of several jobs at once (the dataloader's batch function). */
  imagesOf(jobIds: readonly string[]): Promise<StoredImage[][]> {
    return Promise.all(jobIds.map(async (id) => (await this.get(id))?.images ?? []));
  }

  /** 1-based queue position, null when not queued. */
  queuePosition(jobId: string): Promise<number | null> {
    return this.#backend.queue.position(jobId);
  }

  /**
   * Cancels a job: queued ones at once, running ones at the next step boundary. Returns the job (already
   * terminal jobs are returned unchanged).
   * @throws NotFoundError
   */
  async cancel(id: string, reason = 'canceled by client', caller?: Caller): Promise<Job> {
    const job = await this.#require(id, caller);
    if (isTerminal(job)) return job;
    await this.#backend.queue.cancel(job, reason);
    return (await this.get(id)) ?? job;
  }

  /**
   * The job's events: a snapshot first, then live events, ending after the terminal one. Closing the iterator
   * (`return()`) unsubscribes at once. Events the snapshot already reflects are skipped, so every step arrives
   * once, in order (after a `retrying` event, steps start again from 1).
   * @throws NotFoundError (also for another caller's job)
   */
  async watch(id: string, caller?: Caller): Promise<AsyncIterableIterator<JobEvent>> {
    let stop = () => {};
    const channel = new Channel<JobEvent>(() => stop());
    let lastStep = 0;
    let started = false;
    const deliver = (e: JobEvent) => {
      if (e.type === 'retrying') {
        lastStep = 0;
        started = false;
      } else if (e.type === 'started') {
        if (started) return;
        started = true;
      } else if (e.type === 'step') {
        if (e.step <= lastStep) return;
        lastStep = e.step;
      }
      channel.push(e);
      if (isTerminalEvent(e)) channel.end();
    };
    // Subscribe before the snapshot; what arrives in between waits, then goes through the same filter.
    let pending: JobEvent[] | undefined = [];
    const resync = () => {
      void this.get(id).then((job) => {
        if (job && isTerminal(job)) deliver(terminalEvent(job));
      });
    };
    stop = await this.#backend.events.subscribe(id, (e) => (pending ? pending.push(e) : deliver(e)), resync);
    let job: Job;
    try {
      job = await this.#require(id, caller);
    } catch (err) {
      stop();
      throw err;
    }
    lastStep = job.step;
    started = job.status !== 'QUEUED';
    const eta = etaMs(job);
    channel.push({
      type: 'snapshot',
      job,
      queuePosition: job.status === 'QUEUED' ? await this.queuePosition(id).catch(() => null) : null,
      elapsedMs: elapsedMs(job),
      ...(eta !== undefined ? { etaMs: eta } : {}),
    });
    const early = pending;
    pending = undefined;
    if (isTerminal(job)) {
      channel.push(terminalEvent(job));
      channel.end();
    } else {
      for (const e of early) deliver(e);
    }
    return channel;
  }

  /** Resolves with the final job once it is terminal (the REST endpoint's synchronous mode). */
  async waitFor(id: string): Promise<Job> {
    const job = await this.#require(id);
    if (isTerminal(job)) return job;
    for await (const e of await this.watch(id)) {
      if (isTerminalEvent(e)) break;
    }
    return (await this.get(id)) ?? job;
  }

  /** Counts an error returned to a client, by its code. */
  countError(err: unknown): void {
    const code = (err as Partial<ServiceError>)?.code;
    this.metrics.errors.inc({ code: typeof code === 'string' ? code : 'internal' });
  }

  /** Cancels queued work, stops the scheduler and the executor (single process) or the backend's clients. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#backend.close();
    this.images.close();
  }

  #refuseWhileDraining(): void {
    if (this.draining) {
      throw new ServiceUnavailableError('The server is shutting down and accepts no new jobs; retry elsewhere', 5);
    }
  }

  async #require(id: string, caller?: Caller): Promise<Job> {
    const job = await this.get(id, caller);
    if (!job) throw new NotFoundError('Job', id);
    return job;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function checkLoraName(name: string): void {
  const n = loraName().safeParse(name);
  if (!n.success) throw new ValidationError('name', n.error.issues[0]?.message ?? 'invalid LoRA name');
}

/** Creates the service (the image directory is created if needed). */
export function createGenerationService(options: GenerationServiceOptions): Promise<GenerationService> {
  return GenerationService.create(options);
}

/**
 * Refuses what the engine does not run, from its declared capabilities (modes and sizes are checked by the
 * catalogue's ids and limits): a LoRA set on an engine without LoRA, a control image on one without control.
 * @throws LoraRequestError (`unsupported`), ValidationError (`controlImage`, code `unsupported`)
 */
function checkCapabilities(caps: ExecutorCapabilities, request: GenerationRequest, hasControlImage: boolean): void {
  const first = request.loras?.[0];
  if (!caps.lora && first) {
    throw new LoraRequestError('unsupported', 'this engine does not run LoRAs (the ONNX engine does)', first.name);
  }
  if (!caps.control && hasControlImage) {
    throw new ValidationError('controlImage', 'this engine has no control-image path', 'unsupported');
  }
  if (!caps.edit && request.edit) {
    throw new ValidationError(
      'image',
      'this engine does not run img2img or inpainting (the ONNX engine does)',
      'unsupported',
    );
  }
  if (!caps.edit && request.trueCfgScale !== undefined) {
    throw new ValidationError(
      'trueCfgScale',
      'this engine does not run true CFG (the ONNX engine does)',
      'unsupported',
    );
  }
}

/**
 * An inpainting mask must have its image's size (diffusers would resize it silently and shift the repainted area).
 * @throws ValidationError (`mask`, code `size_mismatch`)
 */
function checkMaskSize(image: RgbImage, mask: RgbImage): void {
  if (image.width !== mask.width || image.height !== mask.height) {
    throw new ValidationError(
      'mask',
      `the mask is ${mask.width}×${mask.height} but the image is ${image.width}×${image.height}`,
      'size_mismatch',
    );
  }
}
