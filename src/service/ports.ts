/**
 * @file The three seams between the service facade and where jobs live, how they reach an engine, and how their
 * progress travels. Single-process mode plugs in-memory implementations (`local-backend.ts`: the scheduler, a
 * map, an in-process hub); scale-out mode plugs Redis ones (`redis/`: BullMQ, Redis keys, Redis pub/sub). The
 * scheduler itself is the same in both: in scale-out mode each worker process runs one over its own engine.
 */
import type { JobEvent } from './job-events.ts';
import type { Job, JobStatus } from './jobs.ts';
import type { LoraInfo, LoraScan, LoraSelection, ModelInfo, PlanLayer, StepExecutor } from './pipeline.ts';

/** Job records, readable by every API node. */
export interface JobRepository {
  get(id: string): Promise<Job | undefined>;
  /** Newest first, optionally only some statuses. */
  list(statuses?: readonly JobStatus[]): Promise<Job[]>;
}

/** How a validated job reaches an engine. */
export interface JobQueue {
  /**
   * Records the job (status QUEUED) and hands it to an engine. Enqueuing an id twice has no further effect.
   * @throws QueueFullError, ServiceUnavailableError
   */
  enqueue(job: Job): Promise<void>;
  /** Cancels a queued job at once, a running one at its next step boundary; terminal jobs are left alone. */
  cancel(job: Job, reason: string): Promise<void>;
  /** 1-based position among the jobs no engine has taken yet; null otherwise. */
  position(jobId: string): Promise<number | null>;
}

/** Per-job progress events, delivered to subscribers wherever they are. */
export interface JobEventBus {
  /**
   * Starts listening; resolves once the subscription is live (so a snapshot read afterwards misses nothing).
   * `onResync` runs when the bus may have missed events (a reconnect): the caller re-reads the job.
   */
  subscribe(jobId: string, listener: (e: JobEvent) => void, onResync?: () => void): Promise<() => void>;
}

/** An engine a scheduler drives: its executor, the batch size and default mode it offers, the batching delay. */
export interface ServedEngine {
  executor: StepExecutor;
  /** Samples per engine batch (MODEL_BATCH). */
  batchSize: number;
  /** Default mode's size token (MODEL_SIZE). */
  defaultSize: string;
  /** How long a partial batch waits for companions (MAX_QUEUE_DELAY_MS). */
  maxQueueDelayMs: number;
}

/** What the engines behind a backend serve: one model, at one batch size. */
export interface EngineOffer {
  info: ModelInfo;
  /** Samples per batch (MODEL_BATCH of the engine). */
  batchSize: number;
  /** Default mode's size token (MODEL_SIZE). */
  defaultSize: string;
}

/** Readiness with the reason when not ready. */
export interface BackendHealth {
  ready: boolean;
  /** Why not ready, e.g. `Redis at redis://… is unreachable`. */
  reason?: string;
  /** Engine warm-up of each mode seen so far (`queued`, `warming`, `ready`, `cold`), where the engine is local. */
  modes?: Record<string, string>;
  /** Scale-out: engine workers alive. */
  workers?: number;
}

/**
 * LoRA files and the server-wide default set of the engine behind a backend. Errors are `LoraRequestError`s.
 * Only a backend with one engine it talks to directly has it (single process); scale-out API nodes do not.
 */
export interface LoraControl {
  scan(): Promise<LoraScan>;
  /** Validates a set for `mode`; returns it with canonical names (`x` → `x.safetensors`). */
  check(set: LoraSelection[], mode: string): Promise<LoraSelection[]>;
  /** Adds to (or re-weights in) the default set; the set is unchanged on error. */
  load(name: string, strength: number): Promise<LoraInfo>;
  /** Removes from the default set; false when it was not there. */
  unload(name: string): Promise<boolean>;
  /** The default set now, in load order (kept in step with the engine, so reading it costs nothing). */
  defaults(): LoraSelection[];
  /**
   * Whether a set (as `check` or `defaults` returned it) holds a BFL Control LoRA, i.e. needs a control image;
   * from the metadata `check` and `load` saw, so it costs nothing. Undefined when a member was never seen.
   */
  needsControlImage(set: readonly LoraSelection[]): boolean | undefined;
}

/** Everything the service facade needs from a deployment mode. */
export interface JobBackend {
  jobs: JobRepository;
  queue: JobQueue;
  events: JobEventBus;
  /** LoRA management; absent where the backend has no engine of its own (scale-out API node). */
  loras?: LoraControl;
  /**
   * Per-layer plans of the planned modes already cached or compiled by the engine (never plans or compiles); absent
   * where the backend has no engine of its own (scale-out API node) or the engine has no such plans.
   */
  modePlans?(): Promise<Record<string, PlanLayer[]>>;
  /** The model served; undefined while no engine is known (no worker has registered yet). */
  offer(): EngineOffer | undefined;
  health(): BackendHealth;
  close(): Promise<void>;
}
