/**
 * @file Single-process mode: the {@link JobBackend} ports over in-memory state. Jobs live in a {@link JobStore},
 * the {@link Scheduler} is the queue, and the in-process {@link JobEventHub} carries progress. Needs no Redis.
 */
import { Counter, Gauge } from 'prom-client';
import { LoraRequestError } from './errors.ts';
import type { ImageStore } from './image-store.ts';
import { JobEventHub } from './job-events.ts';
import type { ServiceLogger } from './job-log.ts';
import { type Job, JobStore } from './jobs.ts';
import type { MeasuredStats } from './measured.ts';
import type { ServerMetrics } from './metrics.ts';
import { type WarmModes, warmOrder } from './mode-warmup.ts';
import type { ExecutorStats, LoraAdminPort, LoraInfo, LoraSelection } from './pipeline.ts';
import type { EngineOffer, JobBackend, LoraControl, ServedEngine } from './ports.ts';
import { Scheduler } from './scheduler.ts';

/** What the local backend needs. */
export interface LocalBackendOptions extends ServedEngine {
  maxQueueSize: number;
  maxFinishedJobs?: number;
  images: ImageStore;
  metrics: ServerMetrics;
  measured: MeasuredStats;
  log?: (message: string, err: unknown) => void;
  /** Modes warmed in the background from the start besides the default one (which always is). @default 'all' */
  warmModes?: WarmModes;
  logger?: ServiceLogger;
}

/** The scheduler over one executor, with jobs and events in memory. Closing it closes the executor. */
export function createLocalBackend(o: LocalBackendOptions): JobBackend {
  const store = new JobStore(o.maxFinishedJobs);
  const hub = new JobEventHub();
  const info = o.executor.info();
  const warm = warmOrder(info.capabilities.modes, o.defaultSize, o.warmModes);
  const scheduler = new Scheduler({
    warmModes: warm,
    executor: o.executor,
    store,
    events: hub,
    images: o.images,
    metrics: o.metrics,
    measured: o.measured,
    policy: { maxBatch: o.batchSize, maxQueueDelayMs: o.maxQueueDelayMs },
    maxQueueSize: o.maxQueueSize,
    ...(o.log ? { log: o.log } : {}),
    ...(o.logger ? { logger: o.logger } : {}),
  });
  const offer: EngineOffer = { info, batchSize: o.batchSize, defaultSize: o.defaultSize };
  // Read at scrape time (a call into the worker: it answers between engine runs).
  new Gauge({
    name: 'fluxql_ort_sessions_created',
    help: 'ONNX Runtime sessions created since start (LoRA switches add none)',
    registers: [o.metrics.registry],
    async collect() {
      const stats = await o.executor.stats?.().catch(() => undefined);
      if (stats) this.set(stats.sessionsCreated);
    },
  });
  new Gauge({
    name: 'fluxql_engine_ready',
    help: '1 while the engine process is up, 0 while it is down (crashed, restarting)',
    registers: [o.metrics.registry],
    collect() {
      this.set(o.executor.health?.().ready === false ? 0 : 1);
    },
  });
  new Gauge({
    name: 'fluxql_engine_exits',
    help: 'Engine processes that ended unasked (crash, kill) since start',
    registers: [o.metrics.registry],
    async collect() {
      const stats = await o.executor.stats?.().catch(() => undefined);
      if (stats?.engineExits !== undefined) this.set(stats.engineExits);
    },
  });
  // Engine jobs and joined samples (CUDA executor): counters of the executor, mirrored at scrape time. Absent from
  // the stats (the ONNX executor): left at 0. A joiner that landed in the running engine batch adds a joined sample
  // and no job (issue 16: the server-level check of joining reads these).
  for (const [name, help, read] of [
    [
      'fluxql_engine_jobs_total',
      'Engine jobs prepared since start (requests that did not join a live engine job)',
      (s: ExecutorStats) => s.engineJobs,
    ],
    [
      'fluxql_engine_joined_samples_total',
      'Samples that joined a live engine job (the running engine batch) since start',
      (s: ExecutorStats) => s.joinedSamples,
    ],
  ] as const) {
    new Counter({
      name,
      help,
      registers: [o.metrics.registry],
      async collect() {
        const stats = await o.executor.stats?.().catch(() => undefined);
        const v = stats && read(stats);
        if (v === undefined) return;
        this.reset();
        this.inc(v);
      },
    });
  }
  let closed = false;
  return {
    // Only an engine with the LoRA port (capabilities.lora) has LoRA management.
    ...(o.executor.loraAdmin ? { loras: createLoraControl(o.executor.loraAdmin, offer.info.packedChannels) } : {}),
    // A call into the worker: it answers between engine runs.
    ...(o.executor.modePlans ? { modePlans: () => o.executor.modePlans?.() ?? Promise.resolve({}) } : {}),
    jobs: {
      get: async (id) => store.get(id),
      list: async (statuses) => store.list(statuses),
    },
    queue: {
      async enqueue(job: Job) {
        // Queue first: a full queue must not leave a record behind.
        scheduler.submit(job);
        store.add(job);
      },
      async cancel(job, reason) {
        scheduler.cancel(job, reason);
      },
      position: async (jobId) => scheduler.queuePosition(jobId),
    },
    events: {
      // Publishing is synchronous here, so the subscription is live as soon as this returns.
      subscribe: async (jobId, listener) => hub.listen(jobId, listener),
    },
    offer: () => offer,
    // Not ready while the engine process is down (a supervised engine restarting after a crash), nor until the
    // default mode is warm; the other modes may still be warming (their jobs wait for them).
    health() {
      if (closed) return { ready: false, reason: 'shutting down' };
      const modes = scheduler.modeStates();
      const engine = o.executor.health?.() ?? { ready: true };
      if (!engine.ready) return { ready: false, reason: engine.reason ?? 'the engine is down', modes };
      const waiting = warm[0] !== undefined && !scheduler.isModeReady(warm[0]);
      return waiting ? { ready: false, reason: `warming the default mode ${warm[0]}`, modes } : { ready: true, modes };
    },
    async close() {
      closed = true;
      await scheduler.close();
      await o.executor.close();
    },
  };
}

/**
 * LoRA management over the executor's LoRA port. Changes of the default set run one at a time, and the set is mirrored here
 * after each (the executor starts with an empty one), so `submit` reads it without a call into the busy worker.
 * Likewise which LoRAs are control LoRAs (an input wider than the latents' `baseChannels`), from the metadata seen.
 */
function createLoraControl(ex: LoraAdminPort, baseChannels: number): LoraControl {
  let defaults: LoraSelection[] = [];
  const widens = new Map<string, boolean>();
  const remember = (info: LoraInfo) => {
    widens.set(info.name, info.inChannels > baseChannels);
    return info;
  };
  let changes: Promise<unknown> = Promise.resolve();
  const typed = (err: unknown) => {
    throw LoraRequestError.from(err);
  };
  const change = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = changes.then(async () => {
      try {
        return await fn();
      } finally {
        defaults = await ex.activeLoras().catch(() => defaults);
      }
    });
    changes = run.catch(() => undefined);
    return run.catch(typed);
  };
  return {
    scan: () => ex.loras().catch(typed),
    async check(set, mode) {
      if (set.length === 0) return [];
      const infos = await ex.checkLoras(set, mode).catch(typed);
      for (const info of infos) remember(info);
      return set.map((s, i) => ({ name: infos[i]?.name ?? s.name, strength: s.strength }));
    },
    load: (name, strength) => change(async () => remember(await ex.loadLora(name, strength))),
    unload: (name) => change(() => ex.unloadLora(name)),
    defaults: () => defaults.map((s) => ({ ...s })),
    needsControlImage(set) {
      let needs = false;
      for (const s of set) {
        const w = widens.get(s.name);
        if (w === undefined) return undefined;
        needs ||= w;
      }
      return needs;
    },
  };
}
