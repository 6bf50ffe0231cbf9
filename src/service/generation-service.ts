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
import { Channel, isTerminalEvent, type JobEvent } from './job-events.ts';
import { logJobTransition, type ServiceLogger } from './job-log.ts';
import {
  type ControlImageData,
  elapsedMs,
  etaMs,
  isTerminal,
  type Job,
  type JobStatus,
  type StoredImage,
} from './jobs.ts';
import { createLocalBackend } from './local-backend.ts';
import { type MeasuredLatency, MeasuredStats } from './measured.ts';
import { createMetrics, type ServerMetrics } from './metrics.ts';
import { type ModeResults, readModeResults } from './mode-results.ts';
import type { WarmModes } from './mode-warmup.ts';
import { type GenerationLimits, ModelCatalog, type ModelEntry } from './models.ts';
import {
  ControlImageError,
  type ControlImageOptions,
  type ExecutorCapabilities,
  type LoraInfo,
  type LoraScan,
  type LoraSelection,
  loadControlImageSource,
  type PlanLayer,
  type StepExecutor,
} from './pipeline.ts';
import type { BackendHealth, EngineOffer, JobBackend, LoraControl } from './ports.ts';
import {
  type GenerateInput,
  type GenerationRequest,
  loraStrength,
  MAX_CONTROL_IMAGE_BYTES,
  MAX_CONTROL_IMAGE_PIXELS,
  MAX_LORA_NAME_CHARS,
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
  log?: (message: string, err: unknown) => void;
  /** Gets one line per job transition (`job-log.ts`): `queued` here, the others from the scheduler. */
  logger?: ServiceLogger;
}

/** Limits of control image loading (see `pipeline/control-image.ts`). */
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

  private constructor(backend: JobBackend, deps: BackendDeps, options: CommonOptions) {
    this.#backend = backend;
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
    const service = new GenerationService(backend, deps, options);
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
    return this.#closed ? { ready: false, reason: 'shutting down' } : this.#backend.health();
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
  async submit(input: GenerateInput): Promise<Job> {
    try {
      const parsed = parseGenerateInput(input, this.catalog);
      const source = input.controlImage ?? undefined; // a validated string by now
      checkCapabilities(this.catalog.capabilities, parsed, source !== undefined);
      const request: GenerationRequest = { ...parsed, loras: await this.#lorasOf(parsed) };
      this.#checkControlPresence(request.loras ?? [], source !== undefined);
      const controlImage = source === undefined ? undefined : await this.#loadControlImage(source);
      const job: Job = {
        id: randomUUID(),
        request,
        status: 'QUEUED',
        createdAt: new Date(),
        step: 0,
        totalSteps: request.steps,
        images: [],
        ...(controlImage ? { controlImage, hasControlImage: true } : {}),
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
  async #loadControlImage(source: string): Promise<ControlImageData> {
    try {
      const { image, bytes } = await loadControlImageSource(source, this.#controlImages);
      return { image, bytes };
    } catch (err) {
      if (err instanceof ControlImageError) throw new ValidationError('controlImage', err.message, err.code);
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

  /** A job, or undefined when unknown or evicted. */
  get(id: string): Promise<Job | undefined> {
    return this.#backend.jobs.get(id);
  }

  /** Jobs newest first, optionally filtered by status. */
  list(statuses?: readonly JobStatus[]): Promise<Job[]> {
    return this.#backend.jobs.list(statuses);
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
  async cancel(id: string, reason = 'canceled by client'): Promise<Job> {
    const job = await this.#require(id);
    if (isTerminal(job)) return job;
    await this.#backend.queue.cancel(job, reason);
    return (await this.get(id)) ?? job;
  }

  /**
   * The job's events: a snapshot first, then live events, ending after the terminal one. Closing the iterator
   * (`return()`) unsubscribes at once. Events the snapshot already reflects are skipped, so every step arrives
   * once, in order (after a `retrying` event, steps start again from 1).
   * @throws NotFoundError
   */
  async watch(id: string): Promise<AsyncIterableIterator<JobEvent>> {
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
      job = await this.#require(id);
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

  async #require(id: string): Promise<Job> {
    const job = await this.get(id);
    if (!job) throw new NotFoundError('Job', id);
    return job;
  }
}

function checkLoraName(name: string): void {
  if (typeof name !== 'string' || name.trim() === '') {
    throw new ValidationError('name', 'a LoRA name must not be empty');
  }
  if (name.length > MAX_LORA_NAME_CHARS) {
    throw new ValidationError('name', `a LoRA name must be at most ${MAX_LORA_NAME_CHARS} characters`);
  }
}

/** The terminal event matching a terminal job's record. */
export function terminalEvent(job: Job): JobEvent {
  const base = { jobId: job.id, elapsedMs: elapsedMs(job) };
  if (job.status === 'SUCCEEDED') return { type: 'succeeded', ...base, images: job.images };
  if (job.status === 'CANCELED') return { type: 'canceled', ...base, reason: job.cancelReason ?? 'canceled' };
  return { type: 'failed', ...base, code: job.error?.code ?? 'generation_failed', message: job.error?.message ?? '' };
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
}
