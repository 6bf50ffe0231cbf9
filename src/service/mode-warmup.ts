/**
 * @file Which modes' engines are ready, and their warm-up off the batch path. Planning, compiling and calibrating a
 * mode (seconds on the embedded model, minutes on FLUX.1-dev) happen in `StepExecutor.warm`, one mode at a time,
 * never inside `prepare`: the scheduler admits a mode's jobs only once its engine is warm, and keeps stepping the
 * batches of ready modes meanwhile.
 *
 * Order: the startup list (the default mode first), except that a mode a queued job waits for moves to the front.
 * A failed warm-up reports its error once (the scheduler fails the jobs waiting for it) and the mode goes back to
 * cold, so a later request tries again.
 */
import { sizeOfMode } from '../shared/vocabulary/index.ts';
import type { StepExecutor } from './pipeline.ts';

/** Which modes a server warms at startup besides its default one: every mode it serves, or those listed. */
export type WarmModes = 'all' | readonly string[];

/**
 * The startup warm-up order: the default mode (MODEL_SIZE) first, then the others `warm` names, in the model's
 * order. Names match case-insensitively (`xl` is `XL`); unknown ones are ignored.
 */
export function warmOrder(modes: readonly string[], defaultSize: string, warm: WarmModes = 'all'): string[] {
  const wanted = warm === 'all' ? undefined : new Set(warm.map((m) => sizeOfMode(m)));
  const first = modes.find((m) => sizeOfMode(m) === defaultSize.toLowerCase());
  const rest = modes.filter((m) => m !== first && (!wanted || wanted.has(sizeOfMode(m))));
  return first ? [first, ...rest] : rest;
}

/** A mode's state: `cold` (not started), `queued` (waiting for its turn), `warming` or `ready`. */
export type ModeState = 'cold' | 'queued' | 'warming' | 'ready';

/** What the warm-up reports to its owner. */
export interface ModeWarmupEvents {
  /** A mode turned ready. */
  ready(mode: string): void;
  /** A mode's warm-up failed (it is cold again). */
  failed(mode: string, err: unknown): void;
}

/** See the file comment. */
export class ModeWarmup {
  readonly #executor: StepExecutor;
  readonly #events: ModeWarmupEvents;
  readonly #states = new Map<string, ModeState>();
  readonly #pending: string[] = [];
  #running: Promise<void> | undefined;
  #closed = false;

  constructor(executor: StepExecutor, events: ModeWarmupEvents) {
    this.#executor = executor;
    this.#events = events;
  }

  /** Whether jobs of `mode` can be admitted (always, for executors without warm-up). */
  isReady(mode: string): boolean {
    return !this.#executor.warm || this.#states.get(mode) === 'ready';
  }

  /** Every mode the warm-up has seen, with its state. */
  states(): Record<string, ModeState> {
    return Object.fromEntries(this.#states);
  }

  /** Queues `modes` for warm-up in this order (modes already queued, warming or ready are left as they are). */
  warm(modes: readonly string[]): void {
    for (const mode of modes) this.#enqueue(mode, false);
    this.#pump();
  }

  /** A job waits for `mode`: warm it next unless it is ready or warming already. */
  request(mode: string): void {
    this.#enqueue(mode, true);
    this.#pump();
  }

  /** Starts no more warm-ups (the one in progress ends with the executor). */
  close(): void {
    this.#closed = true;
    this.#pending.length = 0;
  }

  #enqueue(mode: string, urgent: boolean): void {
    if (this.isReady(mode) || this.#states.get(mode) === 'warming') return;
    const i = this.#pending.indexOf(mode);
    if (i >= 0) {
      if (!urgent) return;
      this.#pending.splice(i, 1);
    }
    this.#states.set(mode, 'queued');
    if (urgent) this.#pending.unshift(mode);
    else this.#pending.push(mode);
  }

  #pump(): void {
    if (this.#running || this.#closed) return;
    const mode = this.#pending.shift();
    const warm = this.#executor.warm;
    if (mode === undefined || !warm) return;
    this.#states.set(mode, 'warming');
    this.#running = warm
      .call(this.#executor, mode)
      .then(
        () => {
          this.#states.set(mode, 'ready');
          this.#events.ready(mode);
        },
        (err: unknown) => {
          this.#states.set(mode, 'cold');
          this.#events.failed(mode, err);
        },
      )
      .finally(() => {
        this.#running = undefined;
        this.#pump();
      });
  }
}
