/**
 * Requests are checked against the engine's declared capabilities in one place, the service: an engine without
 * LoRA gets no LoRA sets, control images or LoRA management, and its largest side caps the size limit. The fake
 * executor declares what it is told; it never sees a refused request.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createGenerationService } from '../../../src/service/generation-service.ts';
import { createFakeExecutor, type FakeExecutorOptions } from '../../helpers/fake-executor.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function setup(fake: FakeExecutorOptions) {
  const dir = await mkdtemp(join(tmpdir(), 'fluxql-caps-'));
  const executor = createFakeExecutor(fake);
  const service = await createGenerationService({ executor, batchSize: 2, images: { dir }, log: () => {} });
  cleanups.push(async () => {
    await service.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { service, executor };
}

const input = { prompt: 'a fox', seed: 1, width: 64, height: 64, steps: 2 };

describe('capabilities', () => {
  it('refuses LoRA sets, control images and LoRA management on an engine without LoRA', async () => {
    const { service, executor } = await setup({ lora: false, loras: ['style'] });
    expect(executor.loraAdmin).toBeUndefined();
    await expect(service.submit({ ...input, loras: [{ name: 'style', strength: 1 }] })).rejects.toMatchObject({
      name: 'LoraRequestError',
      code: 'unsupported',
      lora: 'style',
    });
    await expect(service.submit({ ...input, controlImage: 'data:image/png;base64,AAAA' })).rejects.toMatchObject({
      name: 'ValidationError',
      field: 'controlImage',
      code: 'unsupported',
    });
    await expect(service.loadLora('style', 1)).rejects.toMatchObject({ code: 'unsupported' });
    expect(service.models()[0]).toMatchObject({ loraRanks: [], loraFormats: [] });
    // Nothing refused reached the engine; a plain request runs.
    expect(executor.prepareCalls).toHaveLength(0);
    const job = await service.submit(input);
    expect(job.status).toBe('QUEUED');
  });

  it('refuses img2img, inpainting and true CFG on an engine without edits (the CUDA engine) as unsupported', async () => {
    const { service, executor } = await setup({ edit: false });
    const png = 'data:image/png;base64,AAAA';
    await expect(service.submit({ ...input, image: png })).rejects.toMatchObject({
      name: 'ValidationError',
      field: 'image',
      code: 'unsupported',
    });
    await expect(service.submit({ ...input, negativePrompt: 'blur', trueCfgScale: 2 })).rejects.toMatchObject({
      name: 'ValidationError',
      field: 'trueCfgScale',
      code: 'unsupported',
    });
    expect(executor.prepareCalls).toHaveLength(0);
    // A negative prompt with the scale at 1 runs no negative branch: a plain request.
    expect((await service.submit({ ...input, negativePrompt: 'blur' })).status).toBe('QUEUED');
  });

  it("caps the size limit at the engine's largest side", async () => {
    const { service } = await setup({ maxSide: 512 });
    expect(service.models()[0]?.limits.maxSide).toBe(512);
    await expect(service.submit({ ...input, width: 768, height: 768 })).rejects.toMatchObject({
      name: 'ValidationError',
      field: 'width',
    });
  });

  it('passes LoRA sets to an engine with the LoRA port', async () => {
    const { service, executor } = await setup({ loras: ['style'] });
    expect(executor.loraAdmin).toBeDefined();
    const job = await service.submit({ ...input, loras: [{ name: 'style', strength: 0.5 }] });
    expect(job.request.loras).toEqual([{ name: 'style.safetensors', strength: 0.5 }]);
  });
});
