/**
 * @file Worker-thread entry that hosts the FLUX pipeline and its ORT sessions. ORT's native `run` blocks its thread
 * for the whole kernel call; running it here keeps the server's event loop (websocket keep-alives, other resolvers)
 * responsive. Messages: `{id, method, args}` in, `{id, ok, value | error}` out; pixel buffers are transferred.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { StepExecutor } from './executor.ts';
import { createInThreadExecutor, type FluxExecutorOptions } from './flux/executor.ts';
import { serializeError, type WorkerRequest, type WorkerResponse } from './worker-protocol.ts';

if (!parentPort) throw new Error('src/pipeline/worker.ts must run in a worker thread');
const port = parentPort;
const ready: Promise<StepExecutor> = createInThreadExecutor(workerData as FluxExecutorOptions);

ready.then(
  (ex) => port.postMessage({ id: 0, ok: true, value: ex.info() } satisfies WorkerResponse),
  (err) => port.postMessage({ id: 0, ok: false, error: serializeError(err) } satisfies WorkerResponse),
);

port.on('message', async (msg: WorkerRequest) => {
  try {
    const ex = await ready;
    const method = ex[msg.method] as ((...a: unknown[]) => Promise<unknown>) | undefined;
    if (!method) throw new Error(`the pipeline executor has no method ${msg.method}`);
    const value = await method.apply(ex, msg.args);
    const transfer = collectTransfers(value);
    port.postMessage({ id: msg.id, ok: true, value } satisfies WorkerResponse, transfer);
    if (msg.method === 'close') port.close();
  } catch (err) {
    port.postMessage({ id: msg.id, ok: false, error: serializeError(err) } satisfies WorkerResponse);
  }
});

/** Buffers of RGB images in a result, moved instead of copied. */
function collectTransfers(value: unknown): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(visit);
    else if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (o.data instanceof Uint8Array && o.data.buffer instanceof ArrayBuffer && !out.includes(o.data.buffer)) {
        out.push(o.data.buffer);
      }
      if (o.preview) visit(o.preview);
    }
  };
  visit(value);
  return out;
}
