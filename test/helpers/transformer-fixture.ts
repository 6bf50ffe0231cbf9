/**
 * @file The flux-tiny transformer fixture (`transformer_case.safetensors`, B 1, L 16, T 24) as the compiler tests use
 * it: the model's transformer config, the fixture tensors, and the full graph's feeds with RoPE tables built from
 * the fixture's ids.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { concatIds, ropeTables } from '../../src/pipeline/flux/rope.ts';
import type { HostTensor } from '../../src/runtime/index.ts';
import type { FluxTransformerConfig } from '../../src/shared/vocabulary/transformer-config.ts';
import { FIXTURES_DIR, MODEL_DIR } from './paths.ts';
import { readSafetensorsF32 } from './read-safetensors.ts';

/** The embedded model's transformer folder. */
export const TRANSFORMER_DIR = join(MODEL_DIR, 'transformer');
/** Its parsed `config.json`. */
export const transformerConfig = JSON.parse(
  readFileSync(join(TRANSFORMER_DIR, 'config.json'), 'utf8'),
) as FluxTransformerConfig;

const fixture = readSafetensorsF32(join(FIXTURES_DIR, 'transformer_case.safetensors'));

/** A tensor of the fixture by name (`hidden_states`, ..., `output`). */
export function fixtureTensor(name: string): Float32Array {
  const t = fixture[name];
  if (!t) throw new Error(`fixture tensor ${name} missing`);
  return t.data;
}

/** The fixture's inputs as feeds of the full transformer graph. */
export function fixtureTransformerFeeds(): Record<string, HostTensor> {
  const t = fixtureTensor;
  const rope = ropeTables(concatIds(t('txt_ids'), t('img_ids')), transformerConfig.axes_dims_rope!);
  return {
    hidden_states: { data: t('hidden_states'), dims: [1, 16, 64] },
    encoder_hidden_states: { data: t('encoder_hidden_states'), dims: [1, 24, 32] },
    pooled_projections: { data: t('pooled_projections'), dims: [1, 32] },
    timestep: { data: t('timestep'), dims: [1] },
    guidance: { data: t('guidance'), dims: [1] },
    rope_cos: { data: rope.cos, dims: [rope.seqLen, rope.dim] },
    rope_sin: { data: rope.sin, dims: [rope.seqLen, rope.dim] },
  };
}
