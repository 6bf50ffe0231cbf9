import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import { writeSafetensors } from '../../../../src/shared/weights/safetensors-writer.ts';
import { openTextEncoderWeights } from '../../../../src/shared/weights/text-encoder-keys.ts';
import { useTempDir } from '../../../helpers/temp-dir.ts';

const tempDir = useTempDir('text-encoder-keys');
const vec = (n: number, base: number) => ({
  dtype: 'F32' as const,
  shape: [n],
  data: Float32Array.from({ length: n }, (_, i) => base + i),
});

describe('text-encoder key normalisation', () => {
  it('strips the text_model. prefix of older CLIP checkpoints and keeps other tensors', () => {
    const path = join(tempDir(), 'clip.safetensors');
    writeSafetensors(path, {
      'text_model.embeddings.token_embedding.weight': vec(4, 0),
      'text_model.encoder.layers.0.mlp.fc1.bias': vec(3, 10),
      'text_model.final_layer_norm.weight': vec(2, 20),
      'text_projection.weight': vec(2, 30),
    });
    const s = openTextEncoderWeights(openSafetensors(path));
    expect(s.names().sort()).toEqual([
      'embeddings.token_embedding.weight',
      'encoder.layers.0.mlp.fc1.bias',
      'final_layer_norm.weight',
      'text_projection.weight',
    ]);
    expect(s.readF32('encoder.layers.0.mlp.fc1.bias')).toEqual(vec(3, 10).data);
    s.close();
  });

  it('serves encoder.embed_tokens.weight and shared.weight from whichever T5 stored', () => {
    const onlyEmbed = join(tempDir(), 't5-embed.safetensors');
    writeSafetensors(onlyEmbed, {
      'encoder.embed_tokens.weight': vec(6, 1),
      'encoder.final_layer_norm.weight': vec(2, 9),
    });
    const a = openTextEncoderWeights(openSafetensors(onlyEmbed));
    expect(a.readF32('shared.weight')).toEqual(vec(6, 1).data);
    expect(a.readF32('encoder.embed_tokens.weight')).toEqual(vec(6, 1).data);
    a.close();

    const both = join(tempDir(), 't5-both.safetensors');
    writeSafetensors(both, { 'shared.weight': vec(6, 1), 'encoder.embed_tokens.weight': vec(6, 100) });
    const b = openTextEncoderWeights(openSafetensors(both));
    // When both are stored each name keeps its own tensor.
    expect(b.readF32('encoder.embed_tokens.weight')[0]).toBe(100);
    expect(b.readF32('shared.weight')[0]).toBe(1);
    b.close();
  });
});
