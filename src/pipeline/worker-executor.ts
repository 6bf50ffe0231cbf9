/**
 * @file `createFluxExecutor`: the {@link StepExecutor} the server uses — the pipeline in a worker thread, reached by
 * message passing. Calls are answered in order by id; if the worker dies, every pending call fails with the cause
 * and later calls fail at once (the service decides whether to start a new executor).
 */
import { Worker } from 'node:worker_threads';
import { resolveEntryModule } from '../shared/entry-module.ts';
import type { ModelInfo, SampleRequest, StepExecutor } from './executor.ts';
import type { FluxExecutorOptions } from './flux/executor.ts';
import { ExecutorError, type WorkerMethod, type WorkerResponse } from './worker-protocol.ts';

/** Starts the worker and waits until the model is loaded (engines compiled or taken from the cache). */
export async function createFluxExecutor(options: FluxExecutorOptions): Promise<StepExecutor> {
  // A compiled build (dist/…/worker.js) runs directly; from sources, a JS bootstrap registers tsx inside the worker
  // (loader hooks registered on the main thread do not reach workers on Node 20).
  const target = resolveEntryModule('./worker.ts', import.meta.url);
  const entry = target.typescript ? new URL('./worker-entry.mjs', import.meta.url) : target.path;
  const worker = new Worker(entry, { workerData: options });
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let dead: Error | undefined;

  const info = await new Promise<ModelInfo>((resolve, reject) => {
    pending.set(0, { resolve: (v) => resolve(v as ModelInfo), reject });
    worker.on('message', (msg: WorkerResponse) => {
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.value);
      else p.reject(new ExecutorError(msg.error));
    });
    const fail = (err: Error) => {
      dead = err;
      for (const p of pending.values()) p.reject(err);
      pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`pipeline worker exited with code ${code}`)));
  });

  const call = <T>(method: WorkerMethod, args: unknown[], transfer: ArrayBuffer[] = []): Promise<T> => {
    if (dead) return Promise.reject(dead);
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      const message = { id, method, args };
      try {
        worker.postMessage(message, transfer);
      } catch (err) {
        // A buffer that cannot move (external or pooled memory; Node ≥ 21 refuses those): copy it instead.
        if (transfer.length === 0 || (err as Error).name !== 'DataCloneError') throw err;
        worker.postMessage(message);
      }
    });
  };

  return {
    info: () => info,
    // Control image pixels move to the worker rather than being copied (SampleRequest.controlImage).
    prepare: (requests) => call('prepare', [requests], controlBuffers(requests)),
    step: (handles, opts) => call('step', [handles, opts]),
    decode: (handles) => call('decode', [handles]),
    release: (handles) => call('release', [handles]),
    loras: () => call('loras', []),
    checkLoras: (set, mode) => call('checkLoras', [set, mode]),
    loadLora: (name, strength) => call('loadLora', [name, strength]),
    unloadLora: (name) => call('unloadLora', [name]),
    activeLoras: () => call('activeLoras', []),
    stats: () => call('stats', []),
    modePlans: () => call('modePlans', []),
    warm: (mode) => call('warm', [mode]),
    async close() {
      if (!dead) await call('close', []).catch(() => undefined);
      await worker.terminate();
    },
  };
}

/** The buffers of the requests' control images that can move as a whole (each once; never part of a larger one). */
function controlBuffers(requests: readonly SampleRequest[]): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const r of requests) {
    const data = r.controlImage?.data;
    if (data?.buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength) {
      out.add(data.buffer);
    }
  }
  return [...out];
}
