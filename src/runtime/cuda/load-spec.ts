/**
 * @file The CUDA engine's load spec: the model as the host resolved it (PROTOCOL.md, `load` with `spec`).
 *
 * The engine does not re-implement layout detection or key mapping: for each component the host sends the weight
 * files, the config (read or inferred) and the diffusers-name → stored-tensor map that `resolveModelRepo` applies
 * for ORT as well (BFL single files, `text_model.`-prefixed CLIP, tied T5 embeddings). A map entry is
 * `[diffusers name, stored name]` or `[diffusers name, stored name, [[r0, r1], ...]]` (rows of the stored tensor along
 * dim 0, concatenated: fused BFL q/k/v and linear1 splits, the swapped final-modulation halves).
 */
import { relative } from 'node:path';
import type { ComponentConfig, ComponentName, ModelRepo } from '../../shared/weights/index.ts';

/** One component as the engine loads it. */
export interface CudaLoadComponent {
  readonly files: readonly string[];
  readonly config: ComponentConfig;
  /** Absent: the files already use diffusers names. */
  readonly map?: readonly CudaMapEntry[];
}

/** `[diffusers name, stored name]` or with row ranges `[r0, r1)` of the stored tensor. */
export type CudaMapEntry =
  | readonly [string, string]
  | readonly [string, string, readonly (readonly [number, number])[]];

export interface CudaLoadSpec {
  readonly format: 'fluxql-load-spec';
  readonly version: 1;
  readonly layout: ModelRepo['layout'];
  readonly components: Readonly<Record<ComponentName, CudaLoadComponent>>;
}

const COMPONENTS: readonly ComponentName[] = ['text_encoder', 'text_encoder_2', 'transformer', 'vae'];

/**
 * Builds the load spec of a resolved model (reads safetensors headers only). `relativeTo`: write file paths
 * relative to this folder (a spec file stored beside the weights, as the GPU fixtures are); default absolute.
 */
export function cudaLoadSpec(repo: ModelRepo, relativeTo?: string): CudaLoadSpec {
  const components = {} as Record<ComponentName, CudaLoadComponent>;
  for (const name of COMPONENTS) {
    const c = repo.components[name];
    const keyMap = c.keyMap();
    const map = keyMap
      ? [...keyMap].map(([to, m]): CudaMapEntry => (m.rows ? [to, m.source, m.rows] : [to, m.source]))
      : undefined;
    components[name] = {
      files: c.files.map((f) => (relativeTo ? relative(relativeTo, f) : f)),
      config: c.config,
      ...(map ? { map } : {}),
    };
  }
  return { format: 'fluxql-load-spec', version: 1, layout: repo.layout, components };
}
