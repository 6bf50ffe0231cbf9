import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  isBflTransformer,
  isBflVae,
  openBflTransformer,
  openBflVae,
} from '../../../../src/shared/weights/bfl-keymap.ts';
import { bf16ToF32, f32ToBf16 } from '../../../../src/shared/weights/dtype.ts';
import { WeightsError } from '../../../../src/shared/weights/errors.ts';
import { inferTransformerConfig, inferVaeConfig } from '../../../../src/shared/weights/infer-config.ts';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import type { WeightSource } from '../../../../src/shared/weights/weight-source.ts';
import {
  expectF32Equal,
  loadDiffusers,
  type Tensor,
  transformerToBfl,
  vaeToBfl,
  writeTensors,
} from '../../../helpers/bfl-fixtures.ts';
import { MODEL_DIR } from '../../../helpers/paths.ts';
import { useTempDir } from '../../../helpers/temp-dir.ts';

const tempDir = useTempDir('bfl');

function readConfig(component: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(MODEL_DIR, component, 'config.json'), 'utf8'));
}

/** Asserts that `source` answers to exactly the diffusers names of `expected`, with equal shapes and values. */
function expectSameTensors(
  source: WeightSource,
  expected: Map<string, Tensor>,
  round?: (x: Float32Array) => Float32Array,
) {
  expect(new Set(source.names())).toEqual(new Set(expected.keys()));
  for (const [name, t] of expected) {
    expect(source.info(name).shape, name).toEqual(t.shape);
    expectF32Equal(source.readF32(name), round ? round(t.data) : t.data, name);
  }
}

describe('BFL transformer → diffusers', () => {
  const diffusers = loadDiffusers('transformer');
  const bfl = transformerToBfl(diffusers);

  it('maps every tensor of an F32 BFL file back exactly', () => {
    const path = join(tempDir(), 'flux1-tiny.safetensors');
    writeTensors(path, bfl, 'F32');
    const raw = openSafetensors(path);
    expect(isBflTransformer(raw.names())).toBe(true);
    expect(isBflTransformer([...diffusers.keys()])).toBe(false);
    const s = openBflTransformer(raw);
    try {
      expect(s.path).toBe(path);
      expectSameTensors(s, diffusers);
      // Byte ranges of a mapped tensor cross the swapped halves correctly.
      const full = s.readBytes('norm_out.linear.bias');
      expect(s.readBytes('norm_out.linear.bias', 100, 180)).toEqual(full.subarray(100, 180));
    } finally {
      s.close();
    }
  });

  it('maps a BF16 file with a model.diffusion_model. prefix to the bf16-rounded values', () => {
    const path = join(tempDir(), 'flux1-tiny-bf16.safetensors');
    writeTensors(path, bfl, 'BF16', 'model.diffusion_model.');
    const s = openBflTransformer(openSafetensors(path));
    try {
      expect(s.info('transformer_blocks.0.attn.to_q.weight').dtype).toBe('BF16');
      expectSameTensors(s, diffusers, (x) => bf16ToF32(f32ToBf16(x)));
    } finally {
      s.close();
    }
  });

  it('infers the diffusers config from names and shapes', () => {
    const path = join(tempDir(), 'flux1-tiny.safetensors');
    writeTensors(path, bfl, 'F32');
    const s = openBflTransformer(openSafetensors(path));
    const expected = readConfig('transformer');
    // The tiny model's RoPE axes (4, 6, 6) cannot be read from shapes; FLUX's default needs a 128-wide head.
    expect(() => inferTransformerConfig(s)).toThrow(/cannot infer axes_dims_rope for head dim 16/);
    expect(() => inferTransformerConfig(s, { axes_dims_rope: [4, 4, 4] })).toThrow(/must sum to the head dim 16/);
    const inferred = inferTransformerConfig(s, { axes_dims_rope: [4, 6, 6] });
    s.close();
    for (const key of [
      'attention_head_dim',
      'num_attention_heads',
      'num_layers',
      'num_single_layers',
      'in_channels',
      'out_channels',
      'joint_attention_dim',
      'pooled_projection_dim',
      'guidance_embeds',
      'patch_size',
      'axes_dims_rope',
    ]) {
      expect(inferred[key], key).toEqual(expected[key]);
    }
  });

  it('infers the same config from the diffusers file itself', () => {
    const s = openSafetensors(join(MODEL_DIR, 'transformer/diffusion_pytorch_model.safetensors'));
    const inferred = inferTransformerConfig(s, { axes_dims_rope: [4, 6, 6] });
    s.close();
    expect(inferred).toMatchObject({
      num_layers: 2,
      num_single_layers: 3,
      num_attention_heads: 2,
      guidance_embeds: true,
    });
  });

  it('derives guidance_embeds from guidance_in and rejects unknown tensors, naming the file', () => {
    const noGuidance = new Map([...bfl].filter(([n]) => !n.startsWith('guidance_in.')));
    const path = join(tempDir(), 'schnell-like.safetensors');
    writeTensors(path, noGuidance, 'F32');
    const s = openBflTransformer(openSafetensors(path));
    expect(inferTransformerConfig(s, { axes_dims_rope: [4, 6, 6] }).guidance_embeds).toBe(false);
    s.close();

    const bad = join(tempDir(), 'extra.safetensors');
    writeTensors(
      bad,
      new Map([...bfl, ['double_blocks.0.mystery.weight', { shape: [1], data: new Float32Array(1) }]]),
      'F32',
    );
    const open = () => openBflTransformer(openSafetensors(bad));
    expect(open).toThrow(WeightsError);
    expect(open).toThrow(bad);
    expect(open).toThrow(/no known BFL → diffusers mapping: double_blocks.0.mystery.weight/);
  });
});

describe('BFL ae.safetensors → diffusers AutoencoderKL', () => {
  const diffusers = loadDiffusers('vae');
  const bfl = vaeToBfl(diffusers);

  it('maps every encoder and decoder tensor back exactly, squeezing the 1×1 attention convs', () => {
    const path = join(tempDir(), 'ae.safetensors');
    writeTensors(path, bfl, 'F32');
    expect(bfl.get('decoder.mid.attn_1.q.weight')?.shape).toEqual([32, 32, 1, 1]);
    expect(bfl.has('decoder.up.1.block.0.nin_shortcut.weight')).toBe(true);
    expect(bfl.has('encoder.down.2.block.0.nin_shortcut.weight')).toBe(true);
    const raw = openSafetensors(path);
    expect(isBflVae(raw.names())).toBe(true);
    expect(isBflVae([...diffusers.keys()])).toBe(false);
    const s = openBflVae(raw);
    try {
      expectSameTensors(s, diffusers);
      const inferred = inferVaeConfig(s, { norm_num_groups: 8 });
      const expected = readConfig('vae');
      for (const key of [
        'block_out_channels',
        'latent_channels',
        'layers_per_block',
        'out_channels',
        'in_channels',
        'norm_num_groups',
        'scaling_factor',
        'shift_factor',
        'mid_block_add_attention',
        'use_quant_conv',
        'use_post_quant_conv',
        'up_block_types',
      ]) {
        expect(inferred[key], key).toEqual(expected[key]);
      }
    } finally {
      s.close();
    }
  });

  it('maps encoder names (down blocks keep their order)', () => {
    const path = join(tempDir(), 'ae-encoder.safetensors');
    const one = (n: number) => ({ shape: [n], data: Float32Array.from({ length: n }, (_, i) => i + n) });
    const t = new Map<string, Tensor>([
      ['decoder.up.0.block.0.conv1.bias', one(2)],
      ['encoder.down.0.block.1.nin_shortcut.bias', one(3)],
      ['encoder.down.1.downsample.conv.bias', one(4)],
      ['encoder.mid.attn_1.proj_out.bias', one(5)],
      ['encoder.norm_out.weight', one(6)],
    ]);
    writeTensors(path, t, 'F32');
    const s = openBflVae(openSafetensors(path));
    expect(s.names().sort()).toEqual([
      'decoder.up_blocks.0.resnets.0.conv1.bias',
      'encoder.conv_norm_out.weight',
      'encoder.down_blocks.0.resnets.1.conv_shortcut.bias',
      'encoder.down_blocks.1.downsamplers.0.conv.bias',
      'encoder.mid_block.attentions.0.to_out.0.bias',
    ]);
    expect(s.readF32('encoder.down_blocks.1.downsamplers.0.conv.bias')).toEqual(one(4).data);
    s.close();
  });
});
