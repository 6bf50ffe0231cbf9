import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { QueueFullError } from '../../../src/service/errors.ts';
import { createGenerationService, type GenerationService } from '../../../src/service/generation-service.ts';
import type { JobEvent } from '../../../src/service/job-events.ts';
import { createFakeExecutor, createGate, type FakeExecutorOptions } from '../../helpers/fake-executor.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(
  fake: FakeExecutorOptions = {},
  opts: { batchSize?: number; maxQueueSize?: number; delay?: number } = {},
) {
  const dir = await mkdtemp(join(tmpdir(), 'fluxql-sched-'));
  const executor = createFakeExecutor(fake);
  const service = await createGenerationService({
    executor,
    batchSize: opts.batchSize ?? 4,
    maxQueueDelayMs: opts.delay ?? 30,
    maxQueueSize: opts.maxQueueSize ?? 16,
    images: { dir },
    log: () => {},
  });
  cleanups.push(async () => {
    await service.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { service, executor, dir };
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

async function counter(service: GenerationService, name: string): Promise<number> {
  const m = await service.metrics.registry.getSingleMetric(name)?.get();
  return m?.values.reduce((s, v) => s + v.value, 0) ?? 0;
}

async function collect(it: AsyncIterable<JobEvent>): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

describe('Scheduler via GenerationService', () => {
  it('batches concurrent compatible jobs and keeps each result equal to a solo run', async () => {
    const { service, executor, dir } = await setup();
    const jobs = await Promise.all([1, 2, 3, 4].map((s) => service.submit(input(s))));
    const done = await Promise.all(jobs.map((j) => service.waitFor(j.id)));
    expect(done.map((j) => j.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED']);
    expect(await counter(service, 'fluxql_batches_total')).toBeLessThan(4);
    expect(Math.max(...executor.stepCalls.map((c) => c.length))).toBeGreaterThan(1);

    const solo = await service.waitFor((await service.submit(input(3))).id);
    const a = await readFile(join(dir, done[2]?.images[0]?.fileName ?? ''));
    const b = await readFile(join(dir, solo.images[0]?.fileName ?? ''));
    expect(a.equals(b)).toBe(true);
    expect(executor.live()).toBe(0);
  });

  it('streams a snapshot, one event per step in order, then the images', async () => {
    const gate = createGate();
    const { service } = await setup({ gate: gate.wait });
    const job = await service.submit(input(7, { steps: 4 }));
    const events = collect(await service.watch(job.id));
    gate.open();
    const list = await events;
    expect(list[0]?.type).toBe('snapshot');
    expect(list.filter((e) => e.type === 'step').map((e) => (e.type === 'step' ? e.step : 0))).toEqual([1, 2, 3, 4]);
    const last = list.at(-1);
    expect(last?.type).toBe('succeeded');
    if (last?.type === 'succeeded') expect(last.images).toHaveLength(1);
  });

  it('lets a compatible job join a running batch at a step boundary', async () => {
    const gate = createGate();
    const { service, executor } = await setup({ gate: gate.wait }, { delay: 0 });
    const first = await service.submit(input(1, { steps: 4 }));
    await vi.waitFor(() => expect(gate.blocked).toBe(1));
    const second = await service.submit(input(2, { steps: 4 }));
    gate.open();
    await Promise.all([service.waitFor(first.id), service.waitFor(second.id)]);
    expect(await counter(service, 'fluxql_batches_total')).toBe(1);
    expect(await counter(service, 'fluxql_batch_joins_total')).toBe(1);
    expect(executor.stepCalls.some((c) => c.length === 2)).toBe(true);
    expect((await service.get(second.id))?.status).toBe('SUCCEEDED');
  });

  it('keeps FIFO across groups: a younger compatible job does not jump an older incompatible one', async () => {
    const gate = createGate();
    const { service, executor } = await setup({ gate: gate.wait }, { delay: 0 });
    const a1 = await service.submit(input(1, { steps: 2 }));
    await vi.waitFor(() => expect(gate.blocked).toBe(1));
    const b = await service.submit(input(2, { steps: 2, width: 128 }));
    const a2 = await service.submit(input(3, { steps: 2 }));
    gate.open();
    await Promise.all([a1, b, a2].map((j) => service.waitFor(j.id)));
    const started = async (id: string) => (await service.get(id))?.startedAt?.getTime() ?? 0;
    expect(await started(b.id)).toBeLessThanOrEqual(await started(a2.id));
    // a2 never shared a step with a1.
    expect(executor.stepCalls.every((c) => c.length === 1)).toBe(true);
  });

  it('cancels a queued job at once and frees its queue slot', async () => {
    const gate = createGate();
    const { service } = await setup({ gate: gate.wait }, { maxQueueSize: 1, delay: 0, batchSize: 1 });
    const running = await service.submit(input(1));
    await vi.waitFor(() => expect(gate.blocked).toBe(1));
    const queued = await service.submit(input(2));
    await expect(service.submit(input(3))).rejects.toThrow(QueueFullError);
    expect(await service.queuePosition(queued.id)).toBe(1);
    await service.cancel(queued.id);
    expect((await service.get(queued.id))?.status).toBe('CANCELED');
    const third = await service.submit(input(3));
    gate.open();
    expect((await service.waitFor(running.id)).status).toBe('SUCCEEDED');
    expect((await service.waitFor(third.id)).status).toBe('SUCCEEDED');
    expect(await counter(service, 'fluxql_errors_total')).toBe(1);
  });

  it('drops a cancelled running job at the next step boundary without disturbing its batch', async () => {
    const gate = createGate();
    const { service, executor, dir } = await setup({ gate: gate.wait }, { delay: 1000 });
    const keep = await service.submit(input(1, { steps: 4 }));
    const drop = await service.submit(input(2, { steps: 4 }));
    const keep2 = await service.submit(input(5, { steps: 4 }));
    const keep3 = await service.submit(input(6, { steps: 4 }));
    await vi.waitFor(() => expect(gate.blocked).toBe(1));
    expect(executor.stepCalls[0]).toHaveLength(4);
    await service.cancel(drop.id, 'client disconnected');
    gate.open();
    const [k] = await Promise.all([keep, keep2, keep3].map((j) => service.waitFor(j.id)));
    const d = await service.waitFor(drop.id);
    expect(d.status).toBe('CANCELED');
    expect(d.cancelReason).toBe('client disconnected');
    expect(executor.stepCalls.slice(1).every((c) => c.length === 3)).toBe(true);
    expect(executor.live()).toBe(0);
    const solo = await service.waitFor((await service.submit(input(1, { steps: 4 }))).id);
    const a = await readFile(join(dir, k?.images[0]?.fileName ?? ''));
    const b = await readFile(join(dir, solo.images[0]?.fileName ?? ''));
    expect(a.equals(b)).toBe(true);
  });

  it('fails only the jobs of a failing engine call and keeps serving', async () => {
    const { service } = await setup({ failOnPrompt: 'boom' }, { delay: 0 });
    const bad = await service.submit(input(1, { prompt: 'boom' }));
    const failed = await service.waitFor(bad.id);
    expect(failed.status).toBe('FAILED');
    expect(failed.error?.message).toMatch(/fake engine failure/);
    const good = await service.waitFor((await service.submit(input(2))).id);
    expect(good.status).toBe('SUCCEEDED');
  });

  it('runs the images of one job as seed, seed+1, … in one batch', async () => {
    const { service, executor } = await setup({}, { delay: 0 });
    const job = await service.waitFor((await service.submit(input(10, { numImages: 3 }))).id);
    expect(job.images.map((i) => i.seed)).toEqual([10, 11, 12]);
    expect(executor.prepareCalls[0]?.map((r) => r.seed)).toEqual([10, 11, 12]);
  });
});

describe('LoRA sets in the scheduler', () => {
  const fox = (strength: number) => [{ name: 'fox', strength }];

  it('batches only jobs with the same LoRA names and strengths, and hands each set to the executor', async () => {
    const gate = createGate();
    const { service, executor } = await setup({ gate: gate.wait, loras: ['fox'] }, { batchSize: 4, delay: 0 });
    const first = await service.submit(input(1, { loras: fox(1) }));
    await vi.waitFor(() => expect(gate.blocked).toBe(1));
    // Queued while the first batch holds the engine: the same set (first in line, so it may join), then others.
    const jobs = [
      first,
      await service.submit(input(4, { loras: [{ name: 'fox.safetensors', strength: 1 }] })),
      await service.submit(input(2, { loras: fox(0.5) })),
      await service.submit(input(3, { loras: [] })),
    ];
    gate.open();
    const done = await Promise.all(jobs.map((j) => service.waitFor(j.id)));
    expect(done.map((j) => j.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED']);
    // Names are canonical on the job; seeds 1 and 4 share a batch (4 joined at a step boundary), 2 and 3 do not.
    expect(done.map((j) => j.request.loras)).toEqual(
      [fox(1), fox(1), fox(0.5), []].map((set) => set.map((l) => ({ ...l, name: 'fox.safetensors' }))),
    );
    const [a, d, b, c] = done.map((j) => j.batchId);
    expect(new Set([a, b, c]).size).toBe(3);
    expect(d).toBe(a);
    expect(await counter(service, 'fluxql_batch_joins_total')).toBe(1);
    // Every prepared sample carried its job's explicit set (never "absent").
    const prepared = executor.prepareCalls.flat();
    expect(prepared.map((r) => [r.seed, r.loras])).toEqual([
      [1, [{ name: 'fox.safetensors', strength: 1 }]],
      [4, [{ name: 'fox.safetensors', strength: 1 }]],
      [2, [{ name: 'fox.safetensors', strength: 0.5 }]],
      [3, []],
    ]);
  });

  it('snapshots the default set at submission and refuses unknown LoRAs with a typed error', async () => {
    const { service } = await setup({ loras: ['fox'] });
    await expect(service.loadLora('nope')).rejects.toMatchObject({ name: 'LoraRequestError', code: 'not_found' });
    await service.loadLora('fox', 0.7);
    const withDefault = await service.submit(input(1));
    expect(withDefault.request.loras).toEqual([{ name: 'fox.safetensors', strength: 0.7 }]);
    expect(await service.unloadLora('fox')).toBe(true);
    expect((await service.submit(input(2))).request.loras).toEqual([]);
    expect(withDefault.request.loras).toEqual([{ name: 'fox.safetensors', strength: 0.7 }]);
    await expect(service.submit(input(3, { loras: [{ name: 'owl' }] }))).rejects.toMatchObject({
      code: 'not_found',
      lora: 'owl',
    });
  });
});
