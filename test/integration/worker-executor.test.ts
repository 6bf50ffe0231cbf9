/**
 * The server's executor: the pipeline in a supervised engine child process. The server's event loop keeps turning
 * while the engine computes, and typed errors survive the process boundary.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFluxExecutor, type SupervisedExecutor } from '../../src/pipeline/index.ts';
import { MODEL_DIR } from '../helpers/paths.ts';

let ex: SupervisedExecutor;
beforeAll(async () => {
  ex = await createFluxExecutor({ modelDir: MODEL_DIR, maxBatch: 4 });
});
afterAll(async () => ex?.close());

describe('createFluxExecutor', () => {
  it('reports the model and its modes', () => {
    expect(ex.info()).toMatchObject({ name: 'flux-tiny', packedChannels: 64, pixelsPerToken: 16, device: 'cpu' });
    expect(ex.info().capabilities).toMatchObject({ lora: true, control: true, maxBatch: 4 });
    expect(ex.info().capabilities.modes).toContain('original');
  });

  it('runs prepare → step → decode across the process boundary with previews', async () => {
    const [h] = await ex.prepare([{ prompt: 'a cat', height: 64, width: 32, steps: 2, guidanceScale: 3.5, seed: 1 }]);
    const r1 = await ex.step([h!], { preview: true });
    expect(r1[0]).toMatchObject({ handle: h, step: 1, totalSteps: 2 });
    expect(r1[0]!.preview).toMatchObject({ width: 4, height: 8 });
    await ex.step([h!]);
    const [img] = await ex.decode([h!]);
    expect([img!.width, img!.height, img!.data.length]).toEqual([32, 64, 32 * 64 * 3]);
    await ex.release([h!]);
    await expect(ex.step([h!])).rejects.toMatchObject({ name: 'UnknownHandleError' });
  });

  it('keeps the main event loop responsive during a long generation', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const [h] = await ex.prepare([
      { prompt: 'a long one', height: 256, width: 256, steps: 8, guidanceScale: 3.5, seed: 2 },
    ]);
    for (let i = 0; i < 8; i++) await ex.step([h!]);
    await ex.decode([h!]);
    clearInterval(timer);
    // The worker computed for many timer periods; a blocked loop would have fired the timer only between messages.
    expect(ticks).toBeGreaterThan(20);
  });

  it('carries typed errors with the parameter across the boundary', async () => {
    await expect(
      ex.prepare([{ prompt: 'x', height: 40, width: 64, steps: 2, guidanceScale: 3.5, seed: 1 }]),
    ).rejects.toMatchObject({
      name: 'InvalidSizeError',
      param: 'height',
    });
  });

  it("carries a LoraError's code, LoRA name and the unchanged default set across the boundary", async () => {
    // This executor has no LORA_DIR: every LoRA is `not_found`, and nothing changes.
    const port = ex.loraAdmin!;
    expect(await port.loras()).toEqual({ loras: [], invalid: [] });
    await expect(port.loadLora('style', 1)).rejects.toMatchObject({
      name: 'LoraError',
      code: 'not_found',
      lora: 'style',
    });
    await expect(port.checkLoras([{ name: 'style', strength: 1 }])).rejects.toMatchObject({ code: 'not_found' });
    expect(await port.activeLoras()).toEqual([]);
    expect(await port.unloadLora('style')).toBe(false);
    expect((await ex.stats()).sessionsCreated).toBeGreaterThan(0);
  });

  it('sends a control image to the engine (one shared by two samples too), leaving the caller its copy', async () => {
    const request = (controlImage: { width: number; height: number; data: Uint8Array }, seed: number) => ({
      prompt: 'x',
      height: 64,
      width: 64,
      steps: 2,
      guidanceScale: 3.5,
      seed,
      controlImage,
    });
    // No control LoRA in the set, so the engine refuses it, typed, after receiving it.
    const own = { width: 2, height: 2, data: new Uint8Array(12).fill(9) };
    await expect(ex.prepare([request(own, 1), request(own, 2)])).rejects.toMatchObject({
      name: 'ControlImageError',
      code: 'unexpected',
      param: 'controlImage',
    });
    expect(own.data.byteLength).toBe(12); // copied into the frame: the caller's pixels stay
    // A view into a larger buffer (e.g. Node's Buffer pool) travels as its own bytes only.
    const pooled = Buffer.from('0123456789abcdef0123456789abcdef');
    const view = { width: 2, height: 2, data: pooled.subarray(4, 16) };
    await expect(ex.prepare([request(view, 1)])).rejects.toMatchObject({ code: 'unexpected' });
    expect(view.data.toString()).toBe('456789abcdef');
  });
});
