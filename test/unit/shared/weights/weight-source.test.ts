import { copyFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { WeightsError } from '../../../../src/shared/weights/errors.ts';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import { type TensorInput, writeSafetensors } from '../../../../src/shared/weights/safetensors-writer.ts';
import { locateComponentWeights, openComponentWeights } from '../../../../src/shared/weights/weight-source.ts';
import { expectF32Equal } from '../../../helpers/bfl-fixtures.ts';
import { MODEL_DIR } from '../../../helpers/paths.ts';
import { useTempDir } from '../../../helpers/temp-dir.ts';

const tempDir = useTempDir('weight-source');
const TRANSFORMER = join(MODEL_DIR, 'transformer/diffusion_pytorch_model.safetensors');

function expectWeightsError(fn: () => unknown, path: string, pattern: RegExp): void {
  expect(fn).toThrow(WeightsError);
  expect(fn).toThrow(path);
  expect(fn).toThrow(pattern);
}

/** Splits the embedded transformer over two shards (alternating tensors) plus a diffusers index json. */
function writeShardedTransformer(dir: string): Map<string, Float32Array> {
  const src = openSafetensors(TRANSFORMER);
  const all = new Map(src.names().map((n) => [n, src.readF32(n)]));
  const shards: [Record<string, TensorInput>, Record<string, TensorInput>] = [{}, {}];
  const weightMap: Record<string, string> = {};
  let total = 0;
  [...all.keys()].forEach((name, i) => {
    const shard = i % 2;
    shards[shard]![name] = { dtype: 'F32', shape: src.info(name).shape, data: all.get(name)! };
    weightMap[name] = `diffusion_pytorch_model-0000${shard + 1}-of-00002.safetensors`;
    total += src.info(name).byteLength;
  });
  src.close();
  shards.forEach((tensors, i) => {
    writeSafetensors(join(dir, `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`), tensors, { format: 'pt' });
  });
  const index = { metadata: { total_size: total }, weight_map: weightMap };
  writeFileSync(join(dir, 'diffusion_pytorch_model.safetensors.index.json'), JSON.stringify(index));
  return all;
}

describe('openComponentWeights', () => {
  it('reads the embedded single-file transformer', () => {
    const s = openComponentWeights(join(MODEL_DIR, 'transformer'));
    expect(s.path).toBe(TRANSFORMER);
    expect(s.info('x_embedder.weight').shape).toEqual([32, 64]);
    s.close();
  });

  it('reads a sharded set through its index exactly like the original', () => {
    const dir = tempDir();
    const original = writeShardedTransformer(dir);
    const located = locateComponentWeights(dir);
    expect(located.kind).toBe('sharded');
    expect(located.files).toHaveLength(2);
    const s = openComponentWeights(dir);
    try {
      expect(new Set(s.names())).toEqual(new Set(original.keys()));
      for (const [name, data] of original) {
        expect(s.has(name)).toBe(true);
        expect(s.info(name).byteLength).toBe(data.byteLength);
        expectF32Equal(s.readF32(name), data, name);
      }
      expectWeightsError(() => s.readF32('nope'), 'index.json', /no tensor named 'nope'/);
    } finally {
      s.close();
    }
  });

  it('prefers diffusion_pytorch_model / model files over other safetensors', () => {
    const dir = tempDir();
    copyFileSync(TRANSFORMER, join(dir, 'model.safetensors'));
    copyFileSync(TRANSFORMER, join(dir, 'other.safetensors'));
    expect(locateComponentWeights(dir).files).toEqual([join(dir, 'model.safetensors')]);
    copyFileSync(TRANSFORMER, join(dir, 'diffusion_pytorch_model.safetensors'));
    expect(locateComponentWeights(dir).files).toEqual([join(dir, 'diffusion_pytorch_model.safetensors')]);
    const lone = tempDir();
    copyFileSync(TRANSFORMER, join(lone, 'weights.safetensors'));
    expect(locateComponentWeights(lone).files).toEqual([join(lone, 'weights.safetensors')]);
  });

  it('names the folder when it is missing, empty or ambiguous', () => {
    const missing = join(tempDir(), 'transformer');
    expectWeightsError(() => openComponentWeights(missing), missing, /component folder not found/);
    const empty = tempDir();
    writeFileSync(join(empty, 'config.json'), '{}');
    expectWeightsError(() => openComponentWeights(empty), empty, /no \*\.safetensors weights/);
    const two = tempDir();
    copyFileSync(TRANSFORMER, join(two, 'a.safetensors'));
    copyFileSync(TRANSFORMER, join(two, 'b.safetensors'));
    expectWeightsError(() => openComponentWeights(two), two, /ambiguous weights, found: a.safetensors, b.safetensors/);
  });

  it('names a missing shard', () => {
    const dir = tempDir();
    writeShardedTransformer(dir);
    const shard = join(dir, 'diffusion_pytorch_model-00002-of-00002.safetensors');
    rmSync(shard);
    expectWeightsError(() => openComponentWeights(dir), shard, /shard listed in .*index\.json is missing/);
  });

  it('names a bad index and a shard that lacks a mapped tensor', () => {
    const dir = tempDir();
    writeShardedTransformer(dir);
    const indexPath = join(dir, 'diffusion_pytorch_model.safetensors.index.json');
    writeFileSync(indexPath, '{"weight_map": ');
    expectWeightsError(() => openComponentWeights(dir), indexPath, /cannot read shard index/);
    writeFileSync(indexPath, JSON.stringify({ weight_map: { 'x_embedder.weight': '../evil.safetensors' } }));
    expectWeightsError(() => openComponentWeights(dir), indexPath, /must be a .safetensors file name/);
    const shard1 = 'diffusion_pytorch_model-00001-of-00002.safetensors';
    writeFileSync(indexPath, JSON.stringify({ weight_map: { 'not.in.shard': shard1 } }));
    expectWeightsError(() => openComponentWeights(dir), join(dir, shard1), /does not hold 'not.in.shard'/);
  });
});
