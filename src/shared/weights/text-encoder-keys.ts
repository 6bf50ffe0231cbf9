/**
 * @file Canonical tensor names for the text encoders, whatever transformers version saved them.
 *
 * Canonical names (what consumers ask for):
 * - CLIP text model: `embeddings.token_embedding.weight`, `embeddings.position_embedding.weight`,
 *   `encoder.layers.{i}.{self_attn.{q,k,v,out}_proj, layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}.{weight,bias}`,
 *   `final_layer_norm.{weight,bias}`: **without** the `text_model.` prefix that FLUX.1-dev's checkpoint (older
 *   transformers) carries and newer saves drop. Other top-level tensors (`text_projection.weight`) keep their names.
 * - T5 encoder: `shared.weight` and `encoder.embed_tokens.weight` are the same tied embedding `[vocab, d_model]`;
 *   files may hold either or both, so both names are always answered, each falling back to the other.
 *   `encoder.block.{i}.layer.{0,1}…` and `encoder.final_layer_norm.weight` are unchanged.
 */
import { createMappedSource, type MappedTensor } from './mapped-source.ts';
import type { WeightSource } from './weight-source.ts';

const CLIP_PREFIX = 'text_model.';

/** Names whose tensor is tied; when one is missing it is served by the other. */
const TIED: readonly (readonly [string, string])[] = [['encoder.embed_tokens.weight', 'shared.weight']];

/** The canonical-name → stored-name map of a text-encoder checkpoint (see the file header for the rules). */
export function textEncoderKeyMap(source: WeightSource): Map<string, MappedTensor> {
  const map = new Map<string, MappedTensor>();
  const names = source.names();
  // Unprefixed names win when a file somehow holds both spellings.
  for (const n of names) if (n.startsWith(CLIP_PREFIX)) map.set(n.slice(CLIP_PREFIX.length), { source: n });
  for (const n of names) if (!n.startsWith(CLIP_PREFIX)) map.set(n, { source: n });
  for (const [a, b] of TIED) {
    const ea = map.get(a);
    const eb = map.get(b);
    if (ea && !eb) map.set(b, ea);
    if (eb && !ea) map.set(a, eb);
  }
  return map;
}

/** A text-encoder checkpoint seen through canonical names; owns (and closes) `source`. */
export function openTextEncoderWeights(source: WeightSource): WeightSource {
  try {
    return createMappedSource(source, textEncoderKeyMap(source));
  } catch (err) {
    source.close();
    throw err;
  }
}
