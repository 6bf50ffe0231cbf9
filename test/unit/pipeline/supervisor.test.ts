/**
 * The engine supervisor's bookkeeping, over engine instances built from the fake executor (the real process is
 * covered by test/integration/engine-crash.test.ts): which calls fail when a process dies, restart with backoff,
 * readiness, and the default LoRA set carried into the new process.
 */
import { describe, expect, it, vi } from 'vitest';
import type { EngineInstance } from '../../../src/pipeline/engine-process/index.ts';
import type { EngineHealth } from '../../../src/pipeline/executor.ts';
import { superviseEngine } from '../../../src/pipeline/supervisor.ts';
import { createFakeExecutor } from '../../helpers/fake-executor.ts';

/** A fake engine "process" that dies when told to. */
function fakeEngine(pid: number, options: { stepGate?: () => Promise<void> } = {}) {
  let die: (err: Error) => void = () => {};
  const exited = new Promise<Error>((resolve) => {
    die = resolve;
  });
  const ex = createFakeExecutor({ loras: ['style'], ...(options.stepGate ? { gate: options.stepGate } : {}) });
  let dead: Error | undefined;
  const guard =
    <A extends unknown[], R>(fn: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      if (dead) throw dead;
      const r = await Promise.race([fn(...a), exited.then((e) => Promise.reject(e))]);
      return r as R;
    };
  const engine: EngineInstance & { crash: () => void; fake: typeof ex; exitedAt?: number } = {
    ...ex,
    pid,
    exited,
    kill: () => engine.crash(),
    prepare: guard(ex.prepare),
    step: guard(ex.step),
    decode: guard(ex.decode),
    crash: () => {
      dead = Object.assign(new Error(`fake engine ${pid} was killed by SIGKILL`), { code: 'engine_exited' });
      die(dead);
    },
    fake: ex,
  };
  return engine;
}

const request = { prompt: 'x', width: 64, height: 64, steps: 3, guidanceScale: 3.5, seed: 1 };

describe('superviseEngine', () => {
  it('fails calls and samples of a dead process with engine_crashed, restarts it and replays the LoRA defaults', async () => {
    const engines: ReturnType<typeof fakeEngine>[] = [];
    let release: () => void = () => {};
    const hold = () =>
      new Promise<void>((r) => {
        release = r;
      });
    let holding = false;
    const sup = await superviseEngine({
      start: async () => {
        const e = fakeEngine(100 + engines.length, { stepGate: () => (holding ? hold() : Promise.resolve()) });
        engines.push(e);
        return e;
      },
      backoffMs: 10,
      log: () => {},
    });
    const seen: EngineHealth[] = [];
    sup.onHealth((h) => seen.push(h));
    await sup.loraAdmin?.loadLora('style', 0.7);

    const [h1] = await sup.prepare([request]);
    holding = true;
    const pending = sup.step([h1!]);
    engines[0]!.crash();
    await expect(pending).rejects.toMatchObject({ name: 'EngineCrashedError', code: 'engine_crashed' });
    release();
    holding = false;
    expect(sup.health().ready).toBe(false);
    // A sample of the dead process stays lost, even after the restart.
    await expect(sup.step([h1!])).rejects.toMatchObject({ code: 'engine_crashed' });

    // The next call waits for the new process and runs there, with the default set loaded again.
    const [h2] = await sup.prepare([request]);
    expect(engines).toHaveLength(2);
    expect(sup.enginePid()).toBe(101);
    expect(await engines[1]!.fake.loraAdmin?.activeLoras()).toEqual([{ name: 'style.safetensors', strength: 0.7 }]);
    expect((await sup.step([h2!]))[0]).toMatchObject({ handle: h2, step: 1 });
    expect(seen.map((h) => h.ready)).toEqual([false, false, true]);
    expect(seen[0]?.reason).toMatch(/died .*SIGKILL.*restarting in 10 ms/);
    expect(await sup.stats()).toMatchObject({ engineStarts: 2, engineExits: 1 });
    await sup.close();
  });

  it('backs off while starts fail, and calls waiting for an engine fail with engine_unavailable after waitMs', async () => {
    const tries: number[] = [];
    const first = fakeEngine(1);
    const sup = await superviseEngine({
      start: async () => {
        if (tries.length === 0 && first.exitedAt === undefined) return first;
        tries.push(performance.now());
        throw new Error('cannot load');
      },
      backoffMs: 20,
      waitMs: 150,
      log: () => {},
    });
    first.crash();
    first.exitedAt = performance.now();
    await new Promise((r) => setTimeout(r, 0)); // the supervisor sees the exit
    await expect(sup.prepare([request])).rejects.toMatchObject({ code: 'engine_unavailable' });
    await vi.waitFor(() => expect(tries.length).toBeGreaterThanOrEqual(3));
    // Each wait at least doubles: 20, 40, 80 ms (lower bounds only; a busy machine only makes them longer).
    expect(tries[0]! - first.exitedAt).toBeGreaterThanOrEqual(19);
    expect(tries[1]! - tries[0]!).toBeGreaterThanOrEqual(39);
    expect(tries[2]! - tries[1]!).toBeGreaterThanOrEqual(79);
    expect(sup.health()).toMatchObject({ ready: false, reason: expect.stringMatching(/could not be restarted/) });
    await sup.close();
  });
});
