/**
 * Mode warm-up (`src/service/mode-warmup.ts`) and the scheduler around it, over the fake executor: warm-ups run one
 * at a time in the startup order, a mode a job waits for goes first, jobs of ready modes run while another mode
 * warms, and a failed warm-up fails only the jobs waiting for that mode (a later request warms it again).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createGenerationService } from '../../../src/service/generation-service.ts';
import { ModeWarmup, warmOrder } from '../../../src/service/mode-warmup.ts';
import { createFakeExecutor, createGate } from '../../helpers/fake-executor.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A warm function whose calls each wait for the test (`gate.step()`), failing for modes in `failing`. */
function controlledWarm(failing = new Set<string>()) {
  const gate = createGate();
  const calls: string[] = [];
  const warm = async (mode: string) => {
    calls.push(mode);
    await gate.wait();
    if (failing.has(mode)) throw new Error(`cannot plan ${mode}`);
  };
  return { gate, calls, warm };
}

describe('warmOrder', () => {
  it('puts the default mode first, then the listed (or all) modes in the model order', () => {
    const modes = ['original', 'XL', 'L', 'M', 'S'];
    expect(warmOrder(modes, 's')).toEqual(['S', 'original', 'XL', 'L', 'M']);
    expect(warmOrder(modes, 'original', ['s', 'xl'])).toEqual(['original', 'XL', 'S']);
    expect(warmOrder(modes, 'original', [])).toEqual(['original']);
  });
});

describe('ModeWarmup', () => {
  it('warms one mode at a time; a mode a job waits for jumps the queue', async () => {
    const { gate, calls, warm } = controlledWarm();
    const ready: string[] = [];
    const w = new ModeWarmup(createFakeExecutor({ warm }), { ready: (m) => ready.push(m), failed: () => {} });
    w.warm(['original', 'XL', 'L', 'S']);
    expect(w.states()).toEqual({ original: 'warming', XL: 'queued', L: 'queued', S: 'queued' });
    w.request('S');
    gate.step();
    await expect.poll(() => calls.length).toBe(2);
    expect(calls).toEqual(['original', 'S']);
    expect(w.isReady('original')).toBe(true);
    expect(w.isReady('S')).toBe(false);
    gate.open();
    await expect.poll(() => ready).toEqual(['original', 'S', 'XL', 'L']);
  });

  it('treats every mode as ready when the executor has no warm-up (CUDA)', () => {
    const w = new ModeWarmup(createFakeExecutor(), { ready: () => {}, failed: () => {} });
    w.warm(['original', 'S']);
    expect(w.isReady('S')).toBe(true);
    expect(w.states()).toEqual({});
  });
});

describe('Scheduler with a mode warming', () => {
  it('runs jobs of a ready mode while another warms, and fails only the jobs of a mode whose warm-up fails', async () => {
    const { gate, calls, warm } = controlledWarm(new Set(['S']));
    const dir = await mkdtemp(join(tmpdir(), 'fluxql-warm-'));
    const service = await createGenerationService({
      executor: createFakeExecutor({ warm, modes: ['original', 'S'] }),
      batchSize: 4,
      maxQueueDelayMs: 0,
      images: { dir },
      warmModes: [],
      log: () => {},
    });
    cleanups.push(async () => {
      await service.close();
      await rm(dir, { recursive: true, force: true });
    });
    expect(service.health()).toMatchObject({ ready: false, modes: { original: 'warming' } });
    gate.step(); // original is warm
    await expect.poll(() => service.health().ready).toBe(true);

    const s = await service.submit({ prompt: 'a boat', seed: 1, width: 64, height: 64, steps: 2, mode: 'S' });
    const o = await service.submit({ prompt: 'a fox', seed: 2, width: 64, height: 64, steps: 2 });
    // S is warming (held at the gate): the original job, submitted after it, completes first.
    expect((await service.waitFor(o.id)).status).toBe('SUCCEEDED');
    expect(service.health().modes).toMatchObject({ original: 'ready', S: 'warming' });
    gate.step(); // S's warm-up fails
    const failed = await service.waitFor(s.id);
    expect([failed.status, failed.error?.message]).toEqual(['FAILED', 'cannot plan S']);
    // The next S request warms S again (and fails again here): nothing else was affected.
    const again = await service.submit({ prompt: 'a boat', seed: 3, width: 64, height: 64, steps: 2, mode: 'S' });
    await expect.poll(() => calls).toEqual(['original', 'S', 'S']);
    gate.open();
    expect((await service.waitFor(again.id)).status).toBe('FAILED');
  });
});
