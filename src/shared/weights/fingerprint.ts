/**
 * @file Stable fingerprints of a component's weights, the key for caching compiled engines.
 *
 * Hashing 24 GB of tensor data at every start is too slow, so the fingerprint covers what changes whenever the
 * weights do in practice: each file's safetensors header (names, dtypes, shapes, offsets, metadata), its size and
 * mtime, plus the key-mapping format and the component config the engine will be built from.
 */
import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { openSafetensors } from './safetensors.ts';

/** Bump when a key mapping changes, so engines built through the old mapping are not reused. */
const MAPPING_VERSION = 'fluxql-weights-1';

/** JSON with object keys sorted, so key order in a config file does not change the hash. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    typeof v === 'object' && v !== null && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

/**
 * sha256 (hex) over the mapping version, `format`, each file's name, size, mtime and header bytes, and `config`.
 *
 * @throws WeightsError when a file is not a readable safetensors file.
 */
export function fingerprintWeights(format: string, files: readonly string[], config: unknown): string {
  const h = createHash('sha256');
  h.update(`${MAPPING_VERSION}\0${format}\0`);
  for (const file of files) {
    const st = statSync(file);
    h.update(`${basename(file)}\0${st.size}\0${st.mtimeMs}\0`);
    const f = openSafetensors(file);
    try {
      h.update(f.headerBytes);
    } finally {
      f.close();
    }
  }
  h.update(canonicalJson(config));
  return h.digest('hex');
}
