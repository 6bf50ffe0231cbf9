/**
 * FluxPipeline on the embedded model with ONNX Runtime on the CPU: determinism, batching, step-level API, engine
 * cache reuse, and clear errors for bad models and bad requests.
 */
import { cpSync, mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { MODEL_DIR } from '../helpers/paths.ts';

const cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-cache-'));
let pipe: FluxPipeline;

beforeAll(async () => {
  pipe = await FluxPipeline.fromPretrained(MODEL_DIR, { compiler: engineCompiler, cacheDir });
});
afterAll(async () => {
  await pipe?.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

const base = { height: 64, width: 96, steps: 3, guidanceScale: 3.5 };

describe('FluxPipeline', () => {
  it('is deterministic for a seed and differs across seeds', async () => {
    const a = await pipe.generate({ ...base, prompt: 'a red cube', seed: 7 });
    const b = await pipe.generate({ ...base, prompt: 'a red cube', seed: 7 });
    const c = await pipe.generate({ ...base, prompt: 'a red cube', seed: 8 });
    expect(a.images[0]!.width).toBe(96);
    expect(a.images[0]!.height).toBe(64);
    expect(Buffer.from(a.images[0]!.data).equals(Buffer.from(b.images[0]!.data))).toBe(true);
    expect(Buffer.from(a.images[0]!.data).equals(Buffer.from(c.images[0]!.data))).toBe(false);
  });

  it('gives a batch of prompts the same pixels as each prompt alone', async () => {
    const prompts = ['a castle on a hill', 'a bowl of fruit', 'two dogs'];
    const batch = await pipe.generate({ ...base, prompts, seed: [1, 2, 3] });
    for (const [i, prompt] of prompts.entries()) {
      const single = await pipe.generate({ ...base, prompt, seed: i + 1 });
      const diff = batch.floatImages[i]!.reduce((m, v, k) => Math.max(m, Math.abs(v - single.floatImages[0]![k]!)), 0);
      expect(diff).toBeLessThan(1e-5);
    }
  });

  it('steps samples at different steps and sizes in one call, reporting progress per step', async () => {
    const [s1, s2, s3] = await pipe.prepare([
      { ...base, prompt: 'x', seed: 1 },
      { ...base, prompt: 'y', seed: 2, steps: 5 },
      { ...base, prompt: 'z', seed: 3, height: 32, width: 32 },
    ]);
    await pipe.step([s1!]);
    await pipe.step([s1!, s2!, s3!]); // s1 at step 1 batched with s2 at step 0
    expect([s1!.step, s2!.step, s3!.step]).toEqual([2, 1, 1]);
    // The joined sample matches a sample that ran alone from the start.
    const [alone] = await pipe.prepare([{ ...base, prompt: 'y', seed: 2, steps: 5 }]);
    await pipe.step([alone!]);
    const d = alone!.latents.reduce((m, v, k) => Math.max(m, Math.abs(v - s2!.latents[k]!)), 0);
    expect(d).toBeLessThan(1e-5);
    const steps: number[] = [];
    await pipe.generate({ ...base, prompt: 'p', seed: 0, onStep: (step, total) => steps.push(step * 100 + total) });
    expect(steps).toEqual([103, 203, 303]);
  });

  it('refuses bad requests naming the parameter', async () => {
    await expect(pipe.generate({ ...base, prompt: 'x', height: 72 })).rejects.toMatchObject({ param: 'height' });
    await expect(pipe.generate({ ...base, prompt: 'x', width: 0 })).rejects.toMatchObject({ param: 'width' });
    await expect(pipe.generate({ ...base, prompt: 'x', steps: 0 })).rejects.toMatchObject({ param: 'steps' });
    await expect(pipe.generate({ ...base, prompt: 'x', latents: new Float32Array(5) })).rejects.toMatchObject({
      param: 'latents',
    });
    await expect(pipe.generate({ ...base, prompt: 'x', mode: 'nope' })).rejects.toMatchObject({ param: 'mode' });
    await expect(pipe.generate({ ...base })).rejects.toMatchObject({ param: 'prompt' });
  });

  it('reuses cached engines on the next load without recompiling', async () => {
    const logs: string[] = [];
    const again = await FluxPipeline.fromPretrained(MODEL_DIR, {
      compiler: engineCompiler,
      cacheDir,
      onLog: (m) => logs.push(m),
    });
    await again.close();
    expect(logs).toEqual([]);
    expect(readdirSync(join(cacheDir, 'components')).filter((d) => !d.includes('.tmp-')).length).toBe(4);
  });
});

describe('bad model files', () => {
  const copy = (): string => {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-model-'));
    cpSync(MODEL_DIR, dir, { recursive: true });
    return dir;
  };

  it('names a missing model folder', async () => {
    await expect(
      FluxPipeline.fromPretrained('/nonexistent/flux', { compiler: engineCompiler, cacheDir }),
    ).rejects.toThrow(/\/nonexistent\/flux/);
  });

  it('names a truncated weights file', async () => {
    const dir = copy();
    truncateSync(join(dir, 'transformer/diffusion_pytorch_model.safetensors'), 100);
    await expect(FluxPipeline.fromPretrained(dir, { compiler: engineCompiler, cacheDir })).rejects.toThrow(
      /transformer\/diffusion_pytorch_model\.safetensors/,
    );
  });

  it('names a tensor whose shape does not fit the config', async () => {
    const dir = copy();
    const cfgPath = join(dir, 'transformer/config.json');
    const cfg = JSON.parse((await import('node:fs')).readFileSync(cfgPath, 'utf8'));
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, joint_attention_dim: 48 }));
    await expect(FluxPipeline.fromPretrained(dir, { compiler: engineCompiler, cacheDir })).rejects.toThrow(
      /context_embedder/,
    );
  });

  it('names a missing tokenizer file', async () => {
    const dir = copy();
    rmSync(join(dir, 'tokenizer/merges.txt'));
    await expect(FluxPipeline.fromPretrained(dir, { compiler: engineCompiler, cacheDir })).rejects.toThrow(
      /merges\.txt/,
    );
  });
});
