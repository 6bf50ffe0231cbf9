/**
 * LoRA parsing: format detection, the mapping of each format onto diffusers modules (fused splits, alpha scales,
 * swapped final-layer halves, control-LoRA extras) and the metadata report.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeBflControlLora } from '../../../../src/cli/conformance/lora-reference.ts';
import { detectLoraFormat, parseLoraFile } from '../../../../src/pipeline/lora/parse.ts';
import { describeLora, type LoraFactor } from '../../../../src/pipeline/lora/types.ts';
import { openSafetensors } from '../../../../src/shared/weights/index.ts';
import { D, MLP, scalar, TINY_CONFIG, TINY_SPEC, t, useTempDir, writeLora } from '../../../helpers/lora.ts';
import { FIXTURES_DIR } from '../../../helpers/paths.ts';

const tempDir = useTempDir('lora-parse');
const fixture = (name: string) => join(FIXTURES_DIR, `${name}.safetensors`);

function factor(f: Map<string, LoraFactor>, module: string): LoraFactor {
  const x = f.get(module);
  if (!x) throw new Error(`no factor for ${module}`);
  return x;
}

/** Rows [from, to) of a row-major matrix with `cols` columns. */
const rows = (m: Float32Array, cols: number, from: number, to: number) =>
  Array.from(m.subarray(from * cols, to * cols));

describe('fixture LoRAs', () => {
  it('detects the three formats and reports rank, layers and size', () => {
    const expected = {
      lora_0_diffusers: ['diffusers', 4],
      lora_1_xlabs: ['xlabs', 8],
      lora_2_kohya: ['kohya', 4],
    } as const;
    for (const [name, [format, rank]] of Object.entries(expected)) {
      const lora = parseLoraFile(fixture(name), TINY_SPEC);
      const info = describeLora(name, lora, 123);
      expect(info.format).toBe(format);
      expect(info.rank).toBe(rank);
      expect(info.sizeBytes).toBe(123);
      expect(info.targetedLayers.length).toBe(lora.factors.size);
      expect(info.targetedLayers.every((m) => TINY_SPEC.linears.has(m))).toBe(true);
    }
  });

  it('maps diffusers keys 1:1 with scale 1 when there is no alpha', () => {
    const lora = parseLoraFile(fixture('lora_0_diffusers'), TINY_SPEC);
    const file = openSafetensors(fixture('lora_0_diffusers'));
    expect(lora.factors.size * 2).toBe(file.names().length);
    const f = factor(lora.factors, 'single_transformer_blocks.0.proj_out');
    expect([f.rank, f.inFeatures, f.outFeatures, f.scale]).toEqual([4, D + MLP, D, 1]);
    expect(Array.from(f.b)).toEqual(
      Array.from(file.readF32('transformer.single_transformer_blocks.0.proj_out.lora_B.weight')),
    );
    file.close();
  });

  it('splits XLabs qkv up rows into q, k, v with one shared down factor', () => {
    const lora = parseLoraFile(fixture('lora_1_xlabs'), TINY_SPEC);
    const file = openSafetensors(fixture('lora_1_xlabs'));
    const up = file.readF32('double_blocks.1.processor.qkv_lora2.up.weight'); // text stream, [3D, 8]
    const parts = ['add_q_proj', 'add_k_proj', 'add_v_proj'].map((m) =>
      factor(lora.factors, `transformer_blocks.1.attn.${m}`),
    );
    parts.forEach((p, i) => {
      expect(p.a).toBe(parts[0]!.a);
      expect(Array.from(p.b)).toEqual(rows(up, 8, i * D, (i + 1) * D));
    });
    expect(factor(lora.factors, 'transformer_blocks.1.attn.to_add_out').scale).toBe(1);
    expect(factor(lora.factors, 'single_transformer_blocks.2.proj_out').inFeatures).toBe(D + MLP);
    file.close();
  });

  it('scales kohya factors by alpha / rank', () => {
    const lora = parseLoraFile(fixture('lora_2_kohya'), TINY_SPEC);
    const file = openSafetensors(fixture('lora_2_kohya'));
    const alpha = file.readF32('lora_unet_double_blocks_0_img_attn_qkv.alpha')[0]!;
    file.close();
    for (const m of ['to_q', 'to_k', 'to_v'])
      expect(factor(lora.factors, `transformer_blocks.0.attn.${m}`).scale).toBe(alpha / 4);
  });
});

describe('kohya variants', () => {
  const qkv = (prefix: string, up: Float32Array) => ({
    [`${prefix}.lora_down.weight`]: t([6, D], 1),
    [`${prefix}.lora_up.weight`]: { dtype: 'F32' as const, shape: [3 * D, 6], data: up },
    [`${prefix}.alpha`]: scalar(3),
  });
  /** An up factor [3D, 6] whose part i uses only rank columns [2i, 2i + 2). */
  const blockDiagonal = () => {
    const up = new Float32Array(3 * D * 6);
    for (let r = 0; r < 3 * D; r++)
      for (let c = 0; c < 6; c++) if (Math.floor(c / 2) === Math.floor(r / D)) up[r * 6 + c] = (r + 1) * 0.01 + c;
    return up;
  };

  it('chunks a block-diagonal fused up factor by rank, else shares the down factor', () => {
    const dir = tempDir();
    const diag = parseLoraFile(
      writeLora(dir, 'a.safetensors', qkv('lora_unet_double_blocks_0_img_attn_qkv', blockDiagonal())),
      TINY_SPEC,
    );
    const k = factor(diag.factors, 'transformer_blocks.0.attn.to_k');
    expect([k.rank, k.scale]).toEqual([2, 0.5]); // alpha 3 over the file's rank 6
    expect(Array.from(k.a)).toEqual(rows(t([6, D], 1).data as Float32Array, D, 2, 4));
    expect(k.b[0]).toBe(blockDiagonal()[D * 6 + 2]); // row D (first k row), column 2

    const dense = blockDiagonal();
    dense[5] = 1; // q row 0 reaches into v's rank columns
    const shared = parseLoraFile(
      writeLora(dir, 'b.safetensors', qkv('lora_unet_double_blocks_0_img_attn_qkv', dense)),
      TINY_SPEC,
    );
    const q = factor(shared.factors, 'transformer_blocks.0.attn.to_q');
    expect(q.rank).toBe(6);
    expect(factor(shared.factors, 'transformer_blocks.0.attn.to_v').a).toBe(q.a);
  });

  it('reads ComfyUI diffusion_model.* keys like lora_unet_* keys', () => {
    const dir = tempDir();
    const up = blockDiagonal();
    const a = parseLoraFile(
      writeLora(dir, 'a.safetensors', qkv('lora_unet_double_blocks_1_txt_attn_qkv', up)),
      TINY_SPEC,
    );
    const b = parseLoraFile(
      writeLora(dir, 'b.safetensors', qkv('diffusion_model.double_blocks.1.txt_attn.qkv', up)),
      TINY_SPEC,
    );
    expect([...b.factors.keys()]).toEqual([...a.factors.keys()]);
    for (const [m, f] of a.factors) expect(Array.from(factor(b.factors, m).b)).toEqual(Array.from(f.b));
  });

  it('swaps the final modulation halves of the up factor only', () => {
    const up = t([2 * D, 4], 5);
    const down = t([4, D], 6);
    const path = writeLora(tempDir(), 'f.safetensors', {
      'lora_unet_final_layer_adaLN_modulation_1.lora_down.weight': down,
      'lora_unet_final_layer_adaLN_modulation_1.lora_up.weight': up,
    });
    const f = factor(parseLoraFile(path, TINY_SPEC).factors, 'norm_out.linear');
    const u = up.data as Float32Array;
    expect(Array.from(f.b)).toEqual([...rows(u, 4, D, 2 * D), ...rows(u, 4, 0, D)]);
    expect(Array.from(f.a)).toEqual(Array.from(down.data as Float32Array));
  });
});

describe('diffusers alphas', () => {
  const pair = (m: string, r: number, inF: number, seed: number) => ({
    [`transformer.${m}.lora_A.weight`]: t([r, inF], seed),
    [`transformer.${m}.lora_B.weight`]: t([D, r], seed + 1),
  });

  it('takes network alphas from .alpha keys', () => {
    const path = writeLora(tempDir(), 'a.safetensors', {
      ...pair('transformer_blocks.0.attn.to_q', 4, D, 1),
      'transformer.transformer_blocks.0.attn.to_q.alpha': scalar(2),
    });
    expect(factor(parseLoraFile(path, TINY_SPEC).factors, 'transformer_blocks.0.attn.to_q').scale).toBe(0.5);
  });

  it('takes lora_alpha and alpha_pattern from lora_adapter_metadata, flat or transformer-prefixed', () => {
    const tensors = {
      ...pair('transformer_blocks.0.attn.to_q', 4, D, 1),
      ...pair('single_transformer_blocks.0.proj_out', 4, D + MLP, 3),
    };
    for (const meta of [
      { r: 4, lora_alpha: 8, alpha_pattern: { proj_out: 2 } },
      { 'transformer.r': 4, 'transformer.lora_alpha': 8, 'transformer.alpha_pattern': { proj_out: 2 } },
    ]) {
      const path = writeLora(tempDir(), 'm.safetensors', tensors, { lora_adapter_metadata: JSON.stringify(meta) });
      const lora = parseLoraFile(path, TINY_SPEC);
      expect(factor(lora.factors, 'transformer_blocks.0.attn.to_q').scale).toBe(2);
      expect(factor(lora.factors, 'single_transformer_blocks.0.proj_out').scale).toBe(0.5);
    }
  });

  it('drops dora_scale keys and reports them', () => {
    const path = writeLora(tempDir(), 'd.safetensors', {
      ...pair('transformer_blocks.0.attn.to_q', 4, D, 1),
      'transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector.dora_scale': t([D], 9),
    });
    expect(parseLoraFile(path, TINY_SPEC).ignoredKeys).toEqual([
      'transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector.dora_scale',
    ]);
  });
});

describe('BFL Control LoRAs', () => {
  it('maps every linear with its bias, replaces every QK norm and widens img_in', () => {
    const tensors = makeBflControlLora(TINY_CONFIG, { rank: 3, imgInChannels: 128 });
    const lora = parseLoraFile(writeLora(tempDir(), 'c.safetensors', tensors), TINY_SPEC);
    expect(lora.format).toBe('bfl-control');
    expect(lora.inChannels).toBe(128);
    expect(lora.factors.size).toBe(TINY_SPEC.linears.size);
    expect(lora.norms.size).toBe(TINY_SPEC.norms.size);
    expect([...lora.factors.values()].every((f) => f.bias && f.scale === 1)).toBe(true);
    expect(factor(lora.factors, 'x_embedder').inFeatures).toBe(128);
    // linear1 → q, k, v, proj_mlp: shared down, bias split [D, D, D, 4D].
    const bias = tensors['single_blocks.1.linear1.lora_B.bias']!.data as Float32Array;
    const mlp = factor(lora.factors, 'single_transformer_blocks.1.proj_mlp');
    expect(mlp.a).toBe(factor(lora.factors, 'single_transformer_blocks.1.attn.to_q').a);
    expect(Array.from(mlp.bias!)).toEqual(Array.from(bias.subarray(3 * D)));
    const norm = tensors['double_blocks.0.txt_attn.norm.key_norm.scale']!.data as Float32Array;
    expect(Array.from(lora.norms.get('transformer_blocks.0.attn.norm_added_k')!)).toEqual(Array.from(norm));
    // Final layer: bias halves swapped with the up rows.
    const fb = tensors['final_layer.adaLN_modulation.1.lora_B.bias']!.data as Float32Array;
    expect(Array.from(factor(lora.factors, 'norm_out.linear').bias!)).toEqual([
      ...fb.subarray(D),
      ...fb.subarray(0, D),
    ]);
  });

  it('detects BFL-named lora_A files without norm keys as BFL Control', () => {
    expect(
      detectLoraFormat(['double_blocks.0.img_attn.qkv.lora_A.weight', 'double_blocks.0.img_attn.qkv.lora_B.weight']),
    ).toBe('bfl-control');
    expect(detectLoraFormat(['transformer.proj_out.lora_A.weight'])).toBe('diffusers');
    expect(detectLoraFormat(['x.lora_down.weight', 'y.processor.z'])).toBe('kohya');
  });
});
