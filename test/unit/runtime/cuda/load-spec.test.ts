/**
 * The CUDA engine's load spec says, per component, which files to read and how diffusers names map to stored rows.
 * The engine (engines/cuda/src/safetensors.cpp) applies it by slicing rows of the stored tensors; here the same
 * rule, applied independently to the raw files, must give every tensor the ORT path reads through `open()`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CudaLoadSpec, cudaLoadSpec } from '../../../../src/runtime/cuda/load-spec.ts';
import { resolveModelRepo } from '../../../../src/shared/weights/index.ts';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import { writeBflRepo } from '../../../../tools/bfl-checkpoint.ts';
import { MODEL_DIR } from '../../../helpers/paths.ts';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A BFL single-file repo of the embedded model (F32, so bytes compare exactly). */
function bflRepo(): string {
  const dir = mkdtempSync(join(tmpdir(), 'fluxql-spec-'));
  dirs.push(dir);
  writeBflRepo(dir, 'F32');
  return dir;
}

/** Bytes of `name` as the spec tells the engine to assemble them (whole stored tensor, or its row ranges). */
function specBytes(spec: CudaLoadSpec, component: keyof CudaLoadSpec['components'], name: string): Buffer {
  const c = spec.components[component];
  const entry = c.map?.find((e) => e[0] === name);
  const stored = entry ? entry[1] : name;
  for (const f of c.files) {
    const file = openSafetensors(f);
    try {
      if (!file.has(stored)) continue;
      const all = file.readBytes(stored);
      const rows = entry?.[2];
      if (!rows) return all;
      const rowBytes = all.length / file.info(stored).shape[0]!;
      return Buffer.concat(rows.map(([a, b]) => all.subarray(a * rowBytes, b * rowBytes)));
    } finally {
      file.close();
    }
  }
  throw new Error(`${component}: ${stored} not in the spec's files`);
}

function expectSpecMatchesOpen(dir: string): CudaLoadSpec {
  const repo = resolveModelRepo(dir);
  const spec = cudaLoadSpec(repo);
  for (const name of ['text_encoder', 'text_encoder_2', 'transformer', 'vae'] as const) {
    const c = spec.components[name];
    expect(c.files.length).toBeGreaterThan(0);
    for (const f of c.files) expect(isAbsolute(f)).toBe(true);
    expect(c.config).toEqual(repo.components[name].config);
    const source = repo.components[name].open();
    try {
      for (const n of source.names()) {
        const want = Buffer.from(source.readF32(n).buffer);
        const info = source.info(n);
        const got = specBytes(spec, name, n);
        // Stored dtype F32 in every file here: the assembled bytes are the float32 values themselves.
        expect(info.dtype, `${name}:${n}`).toBe('F32');
        expect(got.equals(want), `${name}:${n}`).toBe(true);
      }
    } finally {
      source.close();
    }
  }
  // The engine reads it from a frame header (1 MiB at most).
  expect(JSON.stringify(spec).length).toBeLessThan(1 << 20);
  return spec;
}

describe('cudaLoadSpec', () => {
  it('sends diffusers folders as they are, and the CLIP/T5 name maps', () => {
    const spec = cudaLoadSpec(resolveModelRepo(MODEL_DIR));
    expect(spec.layout).toBe('diffusers');
    expect(spec.components.transformer.map).toBeUndefined();
    expect(spec.components.vae.map).toBeUndefined();
    // Tied T5 embedding: both names are answered.
    const t5 = new Map(spec.components.text_encoder_2.map?.map((e) => [e[0], e[1]]));
    expect(t5.get('shared.weight')).toBeDefined();
    expect(t5.get('encoder.embed_tokens.weight')).toBeDefined();
  });

  it('maps a BFL single-file repo by row ranges that rebuild every diffusers tensor', () => {
    const spec = expectSpecMatchesOpen(bflRepo());
    expect(spec.layout).toBe('bfl-folder');
    const map = new Map(spec.components.transformer.map?.map((e) => [e[0], e]));
    const h = spec.components.transformer.config.num_attention_heads as number;
    const hidden = h * (spec.components.transformer.config.attention_head_dim as number);
    expect(map.get('transformer_blocks.0.attn.to_k.weight')).toEqual([
      'transformer_blocks.0.attn.to_k.weight',
      'double_blocks.0.img_attn.qkv.weight',
      [[hidden, 2 * hidden]],
    ]);
    // BFL's final modulation is (shift, scale); diffusers wants (scale, shift): halves swapped.
    expect(map.get('norm_out.linear.weight')?.[2]).toEqual([
      [hidden, 2 * hidden],
      [0, hidden],
    ]);
    expect(map.get('decoder.up_blocks.0.resnets.0.conv1.weight')).toBeUndefined();
    const vae = new Map(spec.components.vae.map?.map((e) => [e[0], e[1]]));
    const ups = (spec.components.vae.config.block_out_channels as number[]).length;
    expect(vae.get('decoder.up_blocks.0.resnets.0.conv1.weight')).toBe(`decoder.up.${ups - 1}.block.0.conv1.weight`);
  });
});
