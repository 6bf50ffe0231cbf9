/**
 * @file {@link superviseEngine}: a {@link StepExecutor} over a succession of engine processes. When the running
 * process dies (native crash, out of memory, SIGKILL):
 * - the calls pending on it, and later calls naming samples it held, fail with {@link EngineCrashedError}
 *   (`engine_crashed`); nothing else fails: queued work simply waits for the next process;
 * - {@link health} turns not-ready with the reason, listeners are told (the server's `/readyz`, a scale-out worker
 *   that pauses taking jobs);
 * - a new process is started after a backoff (200 ms, doubling up to 30 s while processes die young or fail to
 *   start; reset once one has lived 30 s), and the default LoRA set is loaded into it again;
 * - calls that need an engine wait for it (up to `waitMs`, then {@link EngineUnavailableError}).
 *
 * Handles are the supervisor's own (`e<generation>-<inner>`), so a handle of a dead process can never reach a new
 * one that happens to reuse its inner name.
 */
import { EngineCrashedError, EngineUnavailableError } from './engine-errors.ts';
import type { EngineInstance } from './engine-process/client.ts';
import {
  type EngineHealth,
  type ExecutorStats,
  type LoraAdminPort,
  type ModelInfo,
  type PlanLayer,
  type RgbImage,
  type SampleHandle,
  type SampleRequest,
  type StepExecutor,
  type StepResult,
  UnknownHandleError,
} from './executor.ts';
import type { LoraSelection } from './lora/index.ts';

/** Options of {@link superviseEngine}. */
export interface SupervisorOptions {
  /** Starts one engine process and resolves once it is loaded. */
  start: () => Promise<EngineInstance>;
  /** Name in messages. @default 'engine' */
  name?: string;
  /** First restart delay; doubled for each process in a row that died young or failed to start. @default 200 */
  backoffMs?: number;
  /** @default 30000 */
  maxBackoffMs?: number;
  /** A process that lived this long before dying counts as healthy: the backoff starts over. @default 30000 */
  stableMs?: number;
  /** How long a call waits for a process to be up before failing with EngineUnavailableError. @default 120000 */
  waitMs?: number;
  log?: (message: string) => void;
}

/** A supervised executor, with the running process exposed for tests and diagnostics. */
export interface SupervisedExecutor extends StepExecutor {
  health(): EngineHealth;
  onHealth(listener: (health: EngineHealth) => void): () => void;
  /** Pid of the running engine process; undefined while none is up. */
  enginePid(): number | undefined;
  stats(): Promise<ExecutorStats>;
}

/** Starts the first process (failing fast when it cannot load) and supervises it and its successors. */
export async function superviseEngine(o: SupervisorOptions): Promise<SupervisedExecutor> {
  const first = await o.start();
  return new Supervisor(o, first);
}

interface Inner {
  gen: number;
  handle: SampleHandle;
}

class Supervisor implements SupervisedExecutor {
  readonly #o: Required<Omit<SupervisorOptions, 'log'>> & Pick<SupervisorOptions, 'log'>;
  readonly #info: ModelInfo;
  readonly loraAdmin?: LoraAdminPort;
  readonly #handles = new Map<SampleHandle, Inner>();
  readonly #listeners = new Set<(h: EngineHealth) => void>();
  readonly #waiters = new Set<{ resolve: (e: EngineInstance) => void; reject: (e: Error) => void }>();
  #engine: EngineInstance | undefined;
  #gen = 0;
  #startedAt = 0;
  #failures = 0;
  #health: EngineHealth = { ready: true };
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #starts = 0;
  #exits = 0;
  /** Modes warmed so far: a restarted process warms them again before it counts as up. */
  readonly #warmed = new Set<string>();
  /** ORT sessions the running (or last) process reported. */
  #sessionsCreated = 0;
  /** The default LoRA set as the engine last reported it; loaded again into every new process. */
  #defaults: LoraSelection[] = [];
  /** Changes of the default set run one at a time, so the mirror above follows the engine's order. */
  #loraChanges: Promise<unknown> = Promise.resolve();

  constructor(o: SupervisorOptions, first: EngineInstance) {
    this.#o = {
      name: 'engine',
      backoffMs: 200,
      maxBackoffMs: 30_000,
      stableMs: 30_000,
      waitMs: 120_000,
      ...o,
    };
    this.#info = first.info();
    if (this.#info.capabilities.lora) this.loraAdmin = this.#loraPort();
    this.#adopt(first);
  }

  info(): ModelInfo {
    return this.#info;
  }

  health(): EngineHealth {
    return this.#closed ? { ready: false, reason: `${this.#o.name} closed` } : this.#health;
  }

  onHealth(listener: (health: EngineHealth) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  enginePid(): number | undefined {
    return this.#engine?.pid;
  }

  // ---- process life cycle ------------------------------------------------------------------------------------

  #adopt(engine: EngineInstance): void {
    const gen = ++this.#gen;
    this.#engine = engine;
    this.#starts++;
    this.#startedAt = Date.now();
    void engine.exited.then((err) => this.#onExit(engine, gen, err));
    for (const w of this.#waiters) w.resolve(engine);
    this.#waiters.clear();
    this.#setHealth({ ready: true });
  }

  #onExit(engine: EngineInstance, gen: number, err: Error): void {
    if (this.#closed || this.#engine !== engine || this.#gen !== gen) return;
    this.#engine = undefined;
    this.#exits++;
    const lived = Date.now() - this.#startedAt;
    this.#failures = lived >= this.#o.stableMs ? 0 : this.#failures + 1;
    this.#o.log?.(`${this.#o.name} died after ${(lived / 1000).toFixed(1)} s: ${err.message}`);
    this.#scheduleRestart(`the ${this.#o.name} process died (${err.message})`);
  }

  #scheduleRestart(why: string): void {
    const delay = Math.min(this.#o.maxBackoffMs, this.#o.backoffMs * 2 ** Math.max(0, this.#failures - 1));
    this.#setHealth({ ready: false, reason: `${why}; restarting in ${delay} ms` });
    this.#timer = setTimeout(() => void this.#restart(), delay);
  }

  async #restart(): Promise<void> {
    this.#timer = undefined;
    if (this.#closed) return;
    this.#setHealth({ ready: false, reason: `${this.#o.name} restarting` });
    let engine: EngineInstance | undefined;
    try {
      engine = await this.#o.start();
      // The scheduler admits a mode's jobs once it was warmed: the new process must have it warm too.
      for (const mode of this.#warmed) await engine.warm?.(mode);
    } catch (err) {
      engine?.kill('SIGKILL');
      if (this.#closed) return;
      this.#failures++;
      this.#o.log?.(`${this.#o.name} restart failed: ${(err as Error).message}`);
      this.#scheduleRestart(`the ${this.#o.name} could not be restarted (${(err as Error).message})`);
      return;
    }
    if (this.#closed) {
      await engine.close();
      return;
    }
    await this.#replayDefaults(engine);
    this.#o.log?.(`${this.#o.name} restarted (pid ${engine.pid})`);
    this.#adopt(engine);
  }

  /**
   * Loads the default LoRA set into a new process. A member that no longer loads (its file was removed meanwhile)
   * is dropped from the set with a log line; it must not keep the engine from coming back.
   */
  async #replayDefaults(engine: EngineInstance): Promise<void> {
    if (!engine.loraAdmin) return;
    for (const l of this.#defaults) {
      await engine.loraAdmin.loadLora(l.name, l.strength).catch((err: unknown) => {
        this.#o.log?.(`default LoRA ${l.name} dropped: it no longer loads (${(err as Error).message})`);
      });
    }
    this.#defaults = await engine.loraAdmin.activeLoras().catch(() => this.#defaults);
  }

  #setHealth(h: EngineHealth): void {
    this.#health = h;
    for (const l of this.#listeners) l(h);
  }

  /** The running process; waits for one while it restarts. */
  #up(): Promise<EngineInstance> {
    if (this.#closed) return Promise.reject(new EngineUnavailableError(`the ${this.#o.name} is closed`));
    if (this.#engine) return Promise.resolve(this.#engine);
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (e: EngineInstance) => {
          clearTimeout(timer);
          resolve(e);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(
          new EngineUnavailableError(
            `no ${this.#o.name} came up within ${this.#o.waitMs} ms (${this.#health.reason ?? 'unknown'})`,
          ),
        );
      }, this.#o.waitMs);
      this.#waiters.add(waiter);
    });
  }

  /** Runs a call on a process; its death during the call becomes {@link EngineCrashedError}. */
  async #on<T>(engine: EngineInstance, fn: (e: EngineInstance) => Promise<T>): Promise<T> {
    try {
      return await fn(engine);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'engine_exited') {
        throw new EngineCrashedError(`the ${this.#o.name} process died during this call: ${(err as Error).message}`, {
          cause: err,
        });
      }
      throw err;
    }
  }

  /** The process holding `handles` (all from the running one) and their inner names. */
  #resolve(handles: readonly SampleHandle[]): { engine: EngineInstance; inner: SampleHandle[] } {
    const inner = handles.map((h) => {
      const x = this.#handles.get(h);
      if (!x) throw new UnknownHandleError(h);
      if (x.gen !== this.#gen || !this.#engine) {
        throw new EngineCrashedError(`sample ${h} was lost with the ${this.#o.name} process that held it`);
      }
      return x.handle;
    });
    if (!this.#engine) throw new EngineCrashedError(`the ${this.#o.name} process is not running`);
    return { engine: this.#engine, inner };
  }

  // ---- StepExecutor ------------------------------------------------------------------------------------------

  async prepare(requests: SampleRequest[]): Promise<SampleHandle[]> {
    const engine = await this.#up();
    const gen = this.#gen;
    const inner = await this.#on(engine, (e) => e.prepare(requests));
    return inner.map((handle) => {
      const outer = `e${gen}-${handle}`;
      this.#handles.set(outer, { gen, handle });
      return outer;
    });
  }

  async step(
    handles: SampleHandle[],
    options?: { preview?: boolean },
  ): Promise<(StepResult & { preview?: RgbImage })[]> {
    const { engine, inner } = this.#resolve(handles);
    const results = await this.#on(engine, (e) => e.step(inner, options));
    return results.map((r, i) => ({ ...r, handle: handles[i]! }));
  }

  async decode(handles: SampleHandle[]): Promise<RgbImage[]> {
    const { engine, inner } = this.#resolve(handles);
    return this.#on(engine, (e) => e.decode(inner));
  }

  async release(handles: SampleHandle[]): Promise<void> {
    const live: SampleHandle[] = [];
    for (const h of handles) {
      const x = this.#handles.get(h);
      this.#handles.delete(h);
      if (x && x.gen === this.#gen) live.push(x.handle);
    }
    // Samples of a dead process went with it; a process that dies now takes its samples along.
    if (live.length > 0 && this.#engine) await this.#engine.release(live).catch(() => undefined);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const w of this.#waiters) w.reject(new EngineUnavailableError(`the ${this.#o.name} is closed`));
    this.#waiters.clear();
    this.#handles.clear();
    const engine = this.#engine;
    this.#engine = undefined;
    await engine?.close();
  }

  /** Never waits for a restart (a metrics scrape must answer): while no process is up, the last counts. */
  async stats(): Promise<ExecutorStats> {
    const engine = this.#engine;
    const inner = engine?.stats ? await engine.stats().catch(() => undefined) : undefined;
    if (inner) this.#sessionsCreated = inner.sessionsCreated;
    return { sessionsCreated: this.#sessionsCreated, engineStarts: this.#starts, engineExits: this.#exits };
  }

  /** Warms a mode on the running process; a restarted process warms the same modes before it counts as up. */
  async warm(mode: string): Promise<void> {
    const engine = await this.#up();
    if (!engine.warm) return;
    await this.#on(engine, (e) => e.warm?.(mode) ?? Promise.resolve());
    this.#warmed.add(mode);
  }

  /** Never waits for a restart (the `models` query reads it): none while no process is up. */
  async modePlans(): Promise<Record<string, PlanLayer[]>> {
    const engine = this.#engine;
    if (!engine) return {};
    return engine.modePlans ? this.#on(engine, (e) => e.modePlans?.() ?? Promise.resolve({})) : {};
  }

  #changeDefaults<T>(fn: (port: LoraAdminPort) => Promise<T>): Promise<T> {
    const run = this.#loraChanges.then(async () => {
      const engine = await this.#up();
      const port = this.#port(engine);
      try {
        return await this.#on(engine, () => fn(port));
      } finally {
        this.#defaults = await port.activeLoras().catch(() => this.#defaults);
      }
    });
    this.#loraChanges = run.catch(() => undefined);
    return run;
  }

  /** The running process's LoRA port (present whenever the supervisor has one: the capability is fixed). */
  #port(engine: EngineInstance): LoraAdminPort {
    if (!engine.loraAdmin) throw new EngineUnavailableError(`the ${this.#o.name} process has no LoRA port`);
    return engine.loraAdmin;
  }

  /** The LoRA port over whichever process runs; the default set survives restarts. */
  #loraPort(): LoraAdminPort {
    const onPort = async <T>(fn: (port: LoraAdminPort) => Promise<T>): Promise<T> => {
      const engine = await this.#up();
      return this.#on(engine, () => fn(this.#port(engine)));
    };
    return {
      loras: () => onPort((p) => p.loras()),
      checkLoras: (set, mode) => onPort((p) => p.checkLoras(set, mode)),
      loadLora: (name, strength) => this.#changeDefaults((p) => p.loadLora(name, strength)),
      unloadLora: (name) => this.#changeDefaults((p) => p.unloadLora(name)),
      activeLoras: () => onPort((p) => p.activeLoras()),
    };
  }
}
