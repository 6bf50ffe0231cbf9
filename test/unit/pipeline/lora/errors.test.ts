/**
 * Malformed LoRA files and sets: each is refused with a typed {@link LoraError} naming what is wrong, and a refused
 * file leaves the manager's default set as it was.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LoraError, type LoraErrorCode } from '../../../../src/pipeline/lora/errors.ts';
import { LoraManager } from '../../../../src/pipeline/lora/lora-manager.ts';
import { parseLoraFile } from '../../../../src/pipeline/lora/parse.ts';
import type { TensorInput } from '../../../../src/shared/weights/index.ts';
import { D, TINY_SPEC, t, useTempDir, writeLora } from '../../../helpers/lora.ts';
import { FIXTURES_DIR } from '../../../helpers/paths.ts';

const tempDir = useTempDir('lora-errors');

function refused(fn: () => unknown, code: LoraErrorCode, pattern?: RegExp): LoraError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(LoraError);
    const e = err as LoraError;
    expect(e.code).toBe(code);
    if (pattern) expect(e.message).toMatch(pattern);
    return e;
  }
  throw new Error(`expected a LoraError ${code}`);
}

const toQ = (r: number, inF = D, extra: Record<string, TensorInput> = {}) => ({
  'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': t([r, inF], 1),
  'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': t([D, r], 2),
  ...extra,
});
const parse = (tensors: Record<string, TensorInput>) => () =>
  parseLoraFile(writeLora(tempDir(), 'x.safetensors', tensors), TINY_SPEC);

describe('malformed LoRA files', () => {
  it('refuses a truncated header', () => {
    const path = join(tempDir(), 'cut.safetensors');
    const good = writeLora(tempDir(), 'good.safetensors', toQ(4));
    const bytes = readFileSync(good);
    writeFileSync(path, bytes.subarray(0, 40));
    refused(() => parseLoraFile(path, TINY_SPEC), 'invalid_file', /header length|truncated/);
  });

  it('refuses factors whose shapes do not fit the model, naming the layer', () => {
    const e = refused(parse(toQ(4, D + 1)), 'shape_mismatch', /transformer_blocks\.0\.attn\.to_q/);
    expect(e.keys).toContain('transformer_blocks.0.attn.to_q');
    refused(
      parse({
        'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight': t([4, D], 1),
        'lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight': t([2 * D, 4], 2),
      }),
      'shape_mismatch',
      /rows/,
    );
  });

  it('refuses rank 0, rank 512 and mismatched ranks', () => {
    refused(parse(toQ(0)), 'bad_rank', /rank 0 is outside 1\.\.256/);
    refused(parse(toQ(512)), 'bad_rank', /rank 512/);
    refused(
      parse({ ...toQ(4), 'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': t([D, 8], 2) }),
      'bad_rank',
      /rank 4 but/,
    );
  });

  it('refuses NaN and infinite values, in factors and alphas', () => {
    const nan = t([4, D], 1);
    (nan.data as Float32Array)[7] = Number.NaN;
    refused(
      parse({ ...toQ(4), 'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': nan }),
      'non_finite',
      /to_q: down/,
    );
    refused(
      parse({
        ...toQ(4),
        'transformer.transformer_blocks.0.attn.to_q.alpha': {
          dtype: 'F32',
          shape: [],
          data: Float32Array.of(Infinity),
        },
      }),
      'non_finite',
    );
  });

  it('names unknown and unpaired keys', () => {
    const e = refused(
      parse({
        ...toQ(4),
        'transformer.not_a_layer.lora_A.weight': t([4, D], 3),
        'transformer.proj_out.lora_A.weight': t([4, D], 4),
      }),
      'unmatched_keys',
      /not_a_layer/,
    );
    expect(e.keys).toEqual(['transformer.not_a_layer.lora_A.weight', 'transformer.proj_out.lora_A.weight']);
    refused(parse({ 'something.else': t([2], 1) }), 'unmatched_keys', /something\.else/);
  });

  it('refuses text-encoder LoRA keys as unsupported', () => {
    refused(
      parse({
        'lora_unet_img_in.lora_down.weight': t([4, 64], 1),
        'lora_unet_img_in.lora_up.weight': t([D, 4], 2),
        'lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight': t([4, 32], 3),
      }),
      'unsupported',
      /lora_te1/,
    );
  });
});

describe('LoraManager', () => {
  function manager() {
    const dir = tempDir();
    copyFileSync(join(FIXTURES_DIR, 'lora_0_diffusers.safetensors'), join(dir, 'good.safetensors'));
    writeLora(dir, 'nan.safetensors', {
      ...toQ(4),
      'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': {
        dtype: 'F32',
        shape: [D, 4],
        data: new Float32Array(D * 4).fill(Number.NaN),
      },
    });
    writeLora(dir, 'rank512.safetensors', toQ(512));
    writeFileSync(join(dir, 'truncated.safetensors'), Buffer.from([1, 2, 3]));
    return new LoraManager({ loraDir: dir, spec: TINY_SPEC, baseNorms: () => new Map() });
  }

  it('keeps the default set unchanged when a load fails', () => {
    const m = manager();
    expect(m.load('good', 0.5).format).toBe('diffusers');
    for (const [name, code] of [
      ['nan', 'non_finite'],
      ['rank512', 'bad_rank'],
      ['truncated', 'invalid_file'],
      ['missing', 'not_found'],
      ['../x', 'forbidden_path'],
    ] as const) {
      refused(() => m.load(name), code);
      expect(m.activeSet()).toEqual([{ name: 'good.safetensors', strength: 0.5 }]);
    }
    refused(() => m.load('good', Number.NaN), 'bad_argument');
    expect(m.activeSet()).toEqual([{ name: 'good.safetensors', strength: 0.5 }]);
    expect(m.unload('good')).toBe(true);
    expect(m.activeSet()).toEqual([]);
    expect(m.unload('good')).toBe(false);
  });

  it('lists valid files with metadata and invalid ones with the reason', () => {
    const scan = manager().scan();
    expect(scan.loras.map((l) => [l.name, l.format, l.rank])).toEqual([['good.safetensors', 'diffusers', 4]]);
    expect(scan.invalid.map((i) => [i.name, i.error.code]).sort()).toEqual([
      ['nan.safetensors', 'non_finite'],
      ['rank512.safetensors', 'bad_rank'],
      ['truncated.safetensors', 'invalid_file'],
    ]);
  });

  it('refuses a set naming one LoRA twice', () => {
    refused(
      () =>
        manager().resolve([
          { name: 'good', strength: 1 },
          { name: 'good.safetensors', strength: 2 },
        ]),
      'bad_argument',
      /twice/,
    );
  });
});
