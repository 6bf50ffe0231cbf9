/**
 * @file Worker adverts: each worker writes what it serves (model, batch size, default mode) under its id in one
 * Redis hash and refreshes it as a heartbeat. API nodes build their model catalogue from the live adverts and
 * are ready only while at least one worker is alive.
 */
import type { ModelInfo } from '../pipeline.ts';
import type { EngineOffer } from '../ports.ts';

/** Heartbeat period of a worker. */
export const HEARTBEAT_MS = 1000;
/** A worker silent for this long counts as gone. */
export const WORKER_TIMEOUT_MS = 5 * HEARTBEAT_MS;

/** One worker's entry. */
export interface WorkerAdvert {
  id: string;
  info: ModelInfo;
  batchSize: number;
  defaultSize: string;
  /** False while the worker's engine process is down (it takes no jobs then); absent in older adverts: up. */
  engineReady?: boolean;
  /** `Date.now()` of the last heartbeat. */
  at: number;
}

/** Live adverts from the hash's raw values. */
export function liveAdverts(raw: Record<string, string>, now = Date.now()): WorkerAdvert[] {
  const out: WorkerAdvert[] = [];
  for (const text of Object.values(raw)) {
    try {
      const a = JSON.parse(text) as WorkerAdvert;
      if (now - a.at <= WORKER_TIMEOUT_MS) out.push(a);
    } catch {
      // A foreign or corrupt entry: ignore it.
    }
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

/** The offer of a set of workers: the first one's (a deployment serves one model). */
export function offerOf(adverts: readonly WorkerAdvert[]): EngineOffer | undefined {
  const a = adverts[0];
  return a ? { info: a.info, batchSize: a.batchSize, defaultSize: a.defaultSize } : undefined;
}
