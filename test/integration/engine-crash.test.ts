/**
 * Engine supervision (issue 13): the ONNX engine runs in a child process under a supervisor. A SIGKILL of that
 * process mid-step (standing for a native crash inside ORT) fails only the job it held, with `engine_crashed`; the
 * server stays up (liveness 200), readiness turns 503 with a reason and back to 200 once the restarted engine is
 * loaded, a job that was queued behind runs on the new engine, and the next request succeeds. Real processes, real
 * HTTP and SSE, the embedded model.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { EMBEDDED_MODEL_DIR } from '../../src/config.ts';
import { createFluxExecutor, type SupervisedExecutor } from '../../src/pipeline/index.ts';
import { GenerateImageDocument, type GenerateImageInput, JobProgressDocument } from '../helpers/gql/graphql.ts';
import { collectSse, disposeLeftovers, gqlData, metricValue, startTestServer } from '../helpers/test-server.ts';

afterAll(disposeLeftovers);

async function submit(url: string, input: GenerateImageInput): Promise<string> {
  const { generateImage: r } = await gqlData(url, GenerateImageDocument, { input });
  if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(`submit failed: ${JSON.stringify(r)}`);
  return r.data.jobId;
}

/** Polls an endpoint until stopped; returns the statuses seen, in order, without repeats. */
function watchStatus(url: string): { stop: () => Promise<{ status: number; body: string }[]> } {
  const seen: { status: number; body: string }[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const res = await fetch(url);
      const body = await res.text();
      if (seen.at(-1)?.status !== res.status) seen.push({ status: res.status, body });
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return seen;
    },
  };
}

describe('a supervised ONNX engine process', () => {
  it('SIGKILL mid-step fails only its job (engine_crashed), readiness goes 503 then 200, later work succeeds', async () => {
    const executor: SupervisedExecutor = await createFluxExecutor({
      modelDir: EMBEDDED_MODEL_DIR,
      maxBatch: 2,
      restartBackoffMs: 50,
      log: () => {},
    });
    const { url } = await startTestServer({ modelBatch: 2 }, { executor });
    const firstPid = executor.enginePid();
    expect(firstPid).toBeTypeOf('number');
    expect((await fetch(`${url}/readyz`)).status).toBe(200);

    const readiness = watchStatus(`${url}/readyz`);
    const liveness = watchStatus(`${url}/healthz`);
    // The victim runs long; the second job has another size, so it cannot join the victim's batch and waits.
    const victim = await submit(url, { prompt: 'a storm over the sea', width: 512, height: 512, steps: 40, seed: 1 });
    const queued = await submit(url, { prompt: 'a quiet pond', width: 64, height: 64, steps: 3, seed: 2 });

    let killedAtStep = 0;
    const victimEvents = await collectSse(
      url,
      JobProgressDocument,
      { id: victim },
      {
        onEvent: (e) => {
          const ev = e.data?.jobProgress;
          if (ev?.__typename === 'JobStepEvent' && killedAtStep === 0) {
            killedAtStep = ev.step;
            process.kill(firstPid as number, 'SIGKILL');
          }
        },
      },
    );
    const last = victimEvents.at(-1)?.data?.jobProgress;
    expect(killedAtStep).toBeGreaterThan(0);
    expect(last?.__typename).toBe('JobFailedEvent');
    if (last?.__typename === 'JobFailedEvent') {
      expect(last.code).toBe('engine_crashed');
      expect(last.message).toMatch(/SIGKILL/);
    }

    // The queued job was not the dead engine's: it runs on the restarted one.
    const queuedEvents = await collectSse(url, JobProgressDocument, { id: queued });
    expect(queuedEvents.at(-1)?.data?.jobProgress.__typename).toBe('JobSucceededEvent');
    expect(executor.enginePid()).toBeTypeOf('number');
    expect(executor.enginePid()).not.toBe(firstPid);

    // The next request succeeds, over REST this time.
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'flux-1-dev-original-bs2', prompt: 'a lantern', size: '64x64', n: 1 }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { data: unknown[] }).data).toHaveLength(1);

    const ready = await readiness.stop();
    const live = await liveness.stop();
    // Ready, then not ready with the reason while the engine restarts, then ready again.
    expect(ready.map((r) => r.status)).toEqual([200, 503, 200]);
    expect(JSON.parse(ready[1]!.body)).toMatchObject({ status: 'not ready', reason: expect.stringMatching(/engine/) });
    expect(live.map((r) => r.status)).toEqual([200]);
    expect(await executor.stats()).toMatchObject({ engineStarts: 2, engineExits: 1 });
    expect(await metricValue(url, 'fluxql_engine_exits')).toBe(1);
    expect(await metricValue(url, 'fluxql_engine_ready')).toBe(1);
  });
});
