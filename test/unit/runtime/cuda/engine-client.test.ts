/**
 * The CUDA engine client against a real child process that speaks the engine's framing on stdin/stdout
 * (`test/fixtures/fake-cuda-engine/fluxql-engine.mjs`; the native engine needs a GPU): answers matched by id,
 * progress frames before the final one, error frames as CudaEngineError, and every way the process can end.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CudaEngineClient, CudaEngineError, CudaEngineExitedError } from '../../../../src/runtime/cuda/index.ts';
import { REPO_ROOT } from '../../../helpers/paths.ts';

const FAKE = join(REPO_ROOT, 'test/fixtures/fake-cuda-engine/fluxql-engine.mjs');
const clients: CudaEngineClient[] = [];

function start(onLog?: (line: string) => void, onExit?: (err: CudaEngineExitedError) => void) {
  const client = CudaEngineClient.start({ bin: FAKE, ...(onLog ? { onLog } : {}), ...(onExit ? { onExit } : {}) });
  clients.push(client);
  return client;
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.kill('SIGKILL');
});

describe('CUDA engine client over a process speaking its protocol', () => {
  it('answers calls, passes progress frames before the final one, and reads payloads', async () => {
    const client = start();
    expect((await client.info()).device).toBe('fake');
    const progress: number[] = [];
    const done = await client.step(7, 3, (p) => progress.push(p.step));
    expect(progress).toEqual([1, 2, 3]);
    expect(done).toEqual({ job: 7, step: 3, steps: 3, ms: 2 });
    expect(await client.latents(7)).toEqual({ shape: [1, 1, 4], data: new Float32Array([1, 2, 3, 4]) });
    expect(client.pendingCount).toBe(0);
  });

  it('rejects an error frame with CudaEngineError and stays usable', async () => {
    const client = start();
    const err = await client.release(5).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CudaEngineError);
    expect(err).toMatchObject({ op: 'release', fatal: false, message: 'CUDA engine release: unknown job 5' });
    expect((await client.info()).protocol).toBe(1);
  });

  it('logs a frame no request waits for and goes on', async () => {
    const lines: string[] = [];
    const client = start((l) => lines.push(l));
    expect((await client.request({ op: 'stray' })).header.op).toBe('ok');
    expect(lines.some((l) => /unexpected frame .*"id":9999/.test(l))).toBe(true);
  });

  it('fails pending and later calls with the exit code and the stderr tail when the process dies', async () => {
    const lines: string[] = [];
    let exitSeen: CudaEngineExitedError | undefined;
    const client = start(
      (l) => lines.push(l),
      (e) => (exitSeen = e),
    );
    const err = (await client.request({ op: 'crash' }).catch((e: unknown) => e)) as CudaEngineExitedError;
    expect(err).toBeInstanceOf(CudaEngineExitedError);
    expect(err).toMatchObject({ code: 'engine_exited', exitCode: 3, signal: null });
    expect(err.stderrTail).toBe('loading weights\ncudaErrorIllegalAddress');
    expect(err.message).toMatch(/exited with code 3; last log: loading weights \| cudaErrorIllegalAddress$/);
    expect(lines).toEqual(['loading weights']); // the unfinished last line is in the tail only
    await client.exited;
    expect(exitSeen).toBe(err);
    expect(client.exitError).toBe(err);
    await expect(client.info()).rejects.toBe(err);
  });

  it('kills the process when its stdout stops being frames', async () => {
    const client = start();
    const err = await client.request({ op: 'garbage' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CudaEngineExitedError);
    expect((err as Error).message).toMatch(/was stopped: /);
  });

  it('quits: the engine answers and exits, and the client is then dead', async () => {
    const client = start();
    await client.info();
    await client.quit(5000);
    expect(client.exitError).toMatchObject({ exitCode: 0 });
    await expect(client.info()).rejects.toBeInstanceOf(CudaEngineExitedError);
  });
});
