/**
 * The service's drain, per-job deadline and typed failure codes, over the scheduler and a fake executor (no ORT):
 * a drain refuses new jobs and waits for queued and running ones, or cancels them with a reason once the grace
 * period ends; JOB_TIMEOUT_S fails running and queued jobs with code `timeout`; a LoRA error raised by the engine
 * keeps its code on the failed job.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LoraError } from '../../../src/pipeline/index.ts';
import { ServiceUnavailableError } from '../../../src/service/errors.ts';
import { createGenerationService } from '../../../src/service/generation-service.ts';
import { createFakeExecutor, createGate, type FakeExecutorOptions } from '../../helpers/fake-executor.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(fake: FakeExecutorOptions = {}, opts: { batchSize?: number; jobTimeoutMs?: number } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'fluxql-drain-'));
  const executor = createFakeExecutor(fake);
  const service = await createGenerationService({
    executor,
    batchSize: opts.batchSize ?? 1,
    maxQueueDelayMs: 0,
    maxQueueSize: 16,
    images: { dir },
    ...(opts.jobTimeoutMs !== undefined ? { jobTimeoutMs: opts.jobTimeoutMs } : {}),
    log: () => {},
  });
  cleanups.push(async () => {
    await service.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { service, executor };
}

const input = (seed: number, extra: object = {}) => ({
  prompt: 'a red fox',
  seed,
  width: 64,
  height: 64,
  steps: 3,
  outputFormat: 'png' as const,
  ...extra,
});

describe('drain', () => {
  it('refuses new jobs and lets the running and queued ones finish', async () => {
    const gate = createGate();
    const { service } = await setup({ gate: () => gate.wait() });
    const running = await service.submit(input(1));
    const queued = await service.submit(input(2));
    await expect.poll(() => gate.blocked).toBe(1);
    const drained = service.drain(60_000);
    await expect(service.submit(input(3))).rejects.toBeInstanceOf(ServiceUnavailableError);
    expect(service.health()).toMatchObject({ ready: false });
    gate.open();
    expect(await drained).toEqual({ finished: 2, canceled: 0 });
    expect((await service.get(running.id))?.status).toBe('SUCCEEDED');
    expect((await service.get(queued.id))?.status).toBe('SUCCEEDED');
  });

  it('cancels what is left when the grace period ends, with the reason', async () => {
    const gate = createGate();
    const { service } = await setup({ gate: () => gate.wait() });
    const running = await service.submit(input(1));
    const queued = await service.submit(input(2));
    await expect.poll(() => gate.blocked).toBe(1);
    const drained = service.drain(50);
    // The running job leaves at its next step boundary: let the blocked step end.
    setTimeout(() => gate.open(), 100);
    expect(await drained).toEqual({ finished: 0, canceled: 2 });
    for (const id of [running.id, queued.id]) {
      const job = await service.get(id);
      expect(job?.status).toBe('CANCELED');
      expect(job?.cancelReason).toMatch(/SHUTDOWN_GRACE_S/);
    }
  });
});

describe('JOB_TIMEOUT_S and typed failures', () => {
  it('fails running and queued jobs past their deadline with code timeout', async () => {
    const { service } = await setup({ stepDelayMs: 30 }, { jobTimeoutMs: 50 });
    const a = await service.submit(input(1, { steps: 50 }));
    const b = await service.submit(input(2, { steps: 50 }));
    for (const id of [a.id, b.id]) {
      const job = await service.waitFor(id);
      expect(job.status).toBe('FAILED');
      expect(job.error?.code).toBe('timeout');
      expect(job.error?.message).toMatch(/JOB_TIMEOUT_S/);
    }
  });

  it('keeps the code of a LoRA error raised by the engine', async () => {
    const { service, executor } = await setup();
    const prepare = executor.prepare.bind(executor);
    executor.prepare = async (requests) => {
      if (requests.some((r) => r.prompt.includes('lora'))) {
        throw new LoraError('shape_mismatch', 'factor is one column too wide', 'bad.safetensors');
      }
      return prepare(requests);
    };
    const job = await service.waitFor((await service.submit(input(1, { prompt: 'a lora fox' }))).id);
    expect(job.status).toBe('FAILED');
    expect(job.error?.code).toBe('shape_mismatch');
    const good = await service.waitFor((await service.submit(input(2))).id);
    expect(good.status).toBe('SUCCEEDED');
  });
});
