import { readFileSync, symlinkSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { WeightsError } from '../../../../src/shared/weights/errors.ts';
import { type ModelRepo, resolveModelRepo } from '../../../../src/shared/weights/model-repo.ts';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import {
  expectF32Equal,
  loadDiffusers,
  transformerToBfl,
  vaeToBfl,
  writeTensors,
} from '../../../helpers/bfl-fixtures.ts';
import { MODEL_DIR } from '../../../helpers/paths.ts';
import { useTempDir } from '../../../helpers/temp-dir.ts';

const tempDir = useTempDir('model-repo');
const SHARED_PARTS = ['text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'scheduler'];

function readConfig(component: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(MODEL_DIR, component, 'config.json'), 'utf8'));
}

/** A repo folder whose diffusers parts link to the embedded model, plus BFL single files when asked. */
function makeRepo(opts: { parts?: string[]; bfl?: boolean }): string {
  const dir = tempDir();
  for (const p of opts.parts ?? SHARED_PARTS) symlinkSync(join(MODEL_DIR, p), join(dir, p));
  if (opts.bfl) {
    writeTensors(join(dir, 'flux1-dev.safetensors'), transformerToBfl(loadDiffusers('transformer')), 'BF16');
    writeTensors(join(dir, 'ae.safetensors'), vaeToBfl(loadDiffusers('vae')), 'F32');
  }
  return dir;
}

/** Reads a tensor through a component's source and closes it. */
function read(repo: ModelRepo, component: keyof ModelRepo['components'], name: string): Float32Array {
  const s = repo.components[component].open();
  try {
    return s.readF32(name);
  } finally {
    s.close();
  }
}

const original = (component: 'transformer' | 'vae', name: string) => loadDiffusers(component).get(name)!.data;

describe('resolveModelRepo: diffusers folder', () => {
  it('resolves the embedded flux-tiny with parsed configs and folders', () => {
    const repo = resolveModelRepo(MODEL_DIR);
    expect(repo.layout).toBe('diffusers');
    expect(repo.modelIndex?._class_name).toBe('FluxPipeline');
    expect(repo.tokenizerDir).toBe(join(MODEL_DIR, 'tokenizer'));
    expect(repo.tokenizer2Dir).toBe(join(MODEL_DIR, 'tokenizer_2'));
    expect(repo.schedulerConfig.use_dynamic_shifting).toBe(true);
    for (const c of ['transformer', 'vae', 'text_encoder', 'text_encoder_2'] as const) {
      expect(repo.components[c].format).toBe('diffusers');
      expect(repo.components[c].config).toEqual(readConfig(c));
      expect(repo.components[c].configSource).toBe(join(MODEL_DIR, c, 'config.json'));
      expect(repo.components[c].fingerprint).toMatch(/^[0-9a-f]{64}$/);
    }
    expect(read(repo, 'transformer', 'x_embedder.weight')).toEqual(original('transformer', 'x_embedder.weight'));
    // Fingerprints are stable across resolutions and distinct per component.
    const again = resolveModelRepo(MODEL_DIR);
    expect(again.components.vae.fingerprint).toBe(repo.components.vae.fingerprint);
    expect(new Set(Object.values(repo.components).map((c) => c.fingerprint)).size).toBe(4);
  });

  it('serves canonical text-encoder names (no text_model., tied T5 embedding under both names)', () => {
    const repo = resolveModelRepo(MODEL_DIR);
    const clip = repo.components.text_encoder.open();
    expect(clip.has('embeddings.token_embedding.weight')).toBe(true);
    expect(clip.names().some((n) => n.startsWith('text_model.'))).toBe(false);
    clip.close();
    const t5 = repo.components.text_encoder_2.open();
    // [32128, 32]: compare bytes, element-wise toEqual is slow on a million floats.
    expect(t5.readBytes('encoder.embed_tokens.weight').equals(t5.readBytes('shared.weight'))).toBe(true);
    t5.close();
  });
});

describe('resolveModelRepo: BFL single files', () => {
  it('uses flux1-dev.safetensors and ae.safetensors when the diffusers folders are absent', () => {
    const dir = makeRepo({ bfl: true });
    // No transformer/config.json to hint the tiny RoPE axes: inference must be told.
    expect(() => resolveModelRepo(dir)).toThrow(/cannot infer axes_dims_rope/);
    const repo = resolveModelRepo(dir, { configOverrides: { transformer: { axes_dims_rope: [4, 6, 6] } } });
    expect(repo.layout).toBe('bfl-folder');
    expect(repo.components.transformer).toMatchObject({ format: 'bfl', configSource: 'inferred' });
    expect(repo.components.transformer.files).toEqual([join(dir, 'flux1-dev.safetensors')]);
    expect(repo.components.transformer.config).toMatchObject({
      num_layers: 2,
      num_single_layers: 3,
      attention_head_dim: 16,
    });
    expect(repo.components.vae.format).toBe('bfl');
    // Group count is invisible in shapes: FLUX's 32 without a hint.
    expect(repo.components.vae.config).toMatchObject({ block_out_channels: [16, 16, 32, 32], norm_num_groups: 32 });
    const w = read(repo, 'vae', 'decoder.up_blocks.2.resnets.0.conv_shortcut.weight');
    expect(w).toEqual(original('vae', 'decoder.up_blocks.2.resnets.0.conv_shortcut.weight'));
    const q = read(repo, 'transformer', 'single_transformer_blocks.2.attn.to_k.bias');
    const want = original('transformer', 'single_transformer_blocks.2.attn.to_k.bias');
    for (let i = 0; i < q.length; i++)
      expect(Math.abs(q[i]! - want[i]!)).toBeLessThanOrEqual(Math.abs(want[i]!) * 2 ** -8);
  });

  it('prefers the diffusers folders when both forms exist, unless preferBfl', () => {
    const dir = makeRepo({ parts: [...SHARED_PARTS, 'transformer', 'vae'], bfl: true });
    const diffusers = resolveModelRepo(dir);
    expect(diffusers.layout).toBe('diffusers');
    expect(diffusers.components.transformer.format).toBe('diffusers');
    const bfl = resolveModelRepo(dir, { preferBfl: true });
    expect(bfl.layout).toBe('bfl-folder');
    expect(bfl.components.transformer.format).toBe('bfl');
    expect(bfl.components.vae.format).toBe('bfl');
    // The diffusers configs beside the BFL files fill in what shapes cannot tell.
    expect(bfl.components.transformer.config.axes_dims_rope).toEqual([4, 6, 6]);
    expect(bfl.components.vae.config.norm_num_groups).toBe(8);
    expect(bfl.components.transformer.fingerprint).not.toBe(diffusers.components.transformer.fingerprint);
    expect(read(bfl, 'vae', 'decoder.conv_in.weight')).toEqual(read(diffusers, 'vae', 'decoder.conv_in.weight'));
  });

  it('takes an explicit transformer file, with the rest from baseRepo', () => {
    const file = join(tempDir(), 'my-finetune.safetensors');
    writeTensors(file, transformerToBfl(loadDiffusers('transformer')), 'F32', 'model.diffusion_model.');
    const repo = resolveModelRepo(file, { baseRepo: MODEL_DIR });
    expect(repo.layout).toBe('bfl-file');
    expect(repo.root).toBe(MODEL_DIR);
    expect(repo.components.transformer.format).toBe('bfl');
    expect(repo.components.vae.format).toBe('diffusers');
    const expected = readConfig('transformer');
    for (const k of [
      'num_layers',
      'num_single_layers',
      'num_attention_heads',
      'joint_attention_dim',
      'axes_dims_rope',
    ]) {
      expect(repo.components.transformer.config[k], k).toEqual(expected[k]);
    }
    const s = repo.components.transformer.open();
    for (const [name, t] of loadDiffusers('transformer')) expectF32Equal(s.readF32(name), t.data, name);
    s.close();
  });

  it('changes the fingerprint when a weight file changes', () => {
    const dir = makeRepo({ bfl: true });
    const opts = { configOverrides: { transformer: { axes_dims_rope: [4, 6, 6] } } };
    const before = resolveModelRepo(dir, opts).components.vae.fingerprint;
    utimesSync(join(dir, 'ae.safetensors'), new Date(2001, 1, 1), new Date(2001, 1, 1));
    const after = resolveModelRepo(dir, opts).components.vae.fingerprint;
    expect(after).not.toBe(before);
    expect(resolveModelRepo(dir, opts).components.vae.fingerprint).toBe(after);
  });
});

describe('resolveModelRepo: errors name the path', () => {
  it('reports a missing path, a missing component folder and absent transformer weights', () => {
    const missing = join(tempDir(), 'nope');
    expect(() => resolveModelRepo(missing)).toThrow(WeightsError);
    expect(() => resolveModelRepo(missing)).toThrow(`${missing}: model path not found`);

    const noT5 = makeRepo({ parts: SHARED_PARTS.filter((p) => p !== 'text_encoder_2'), bfl: true });
    expect(() => resolveModelRepo(noT5)).toThrow(`${join(noT5, 'text_encoder_2')}: missing 'text_encoder_2' folder`);

    const noTransformer = makeRepo({ parts: [...SHARED_PARTS, 'vae'] });
    expect(() => resolveModelRepo(noTransformer)).toThrow(`${noTransformer}: no transformer weights`);

    const notWeights = join(MODEL_DIR, 'model_index.json');
    expect(() => resolveModelRepo(notWeights)).toThrow(`${notWeights}: expected a folder or a .safetensors file`);
  });

  it('reports a corrupt BFL file by its path', () => {
    const dir = makeRepo({ parts: [...SHARED_PARTS, 'vae'], bfl: false });
    const bad = join(dir, 'flux1-dev.safetensors');
    writeTensors(bad, new Map(), 'F32');
    const f = openSafetensors(bad);
    expect(f.names()).toEqual([]);
    f.close();
    expect(() => resolveModelRepo(dir)).toThrow(`${bad}: cannot infer config: tensor 'x_embedder.weight' is missing`);
  });
});
