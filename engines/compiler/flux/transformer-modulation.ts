/**
 * @file The `transformer_modulation` component of the `XL` engine: every modulation Linear of the FLUX transformer
 * (all blocks' `norm1.linear`, `norm1_context.linear`, `norm.linear` and `norm_out.linear`), fused, computed from the
 * conditioning inputs alone. They depend only on the timestep, guidance and pooled embedding, so the pipeline runs
 * this graph once per sample over all its steps (`N = steps · B` rows: one GEMM instead of one GEMV per step) and
 * feeds each step's row to the transformer graph built with `modulationInput` (`transformer-fused.ts`).
 *
 * Inputs (N dynamic): `timestep` `[N]` σ, `guidance` `[N]` (only with `guidance_embeds`), `pooled_projections`
 * `[N, pooled_projection_dim]`. Output: `modulation` `[N, M]`, M = Σ out of the modulation Linears, in
 * `modulationSpecs` order — the same embedding, SiLU and fused GEMM builders as the full graph, so the same values.
 */

import {
  type FluxTransformerConfig,
  resolveTransformerConfig,
} from '../../../src/shared/vocabulary/transformer-config.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { silu, type WeightReader } from '../onnx/nn.ts';
import { type LinearPolicy, plainLinear } from './linear-policy.ts';
import type { TensorSpec, TransformerGraphDescriptor } from './transformer.ts';
import { conditioningEmbedding } from './transformer-embeddings.ts';
import { allBlocks, fuseModulation, MODULATION_INPUT, modulationSpecs, modulationWidth } from './transformer-fused.ts';
import type { BuildContext } from './transformer-layers.ts';

/** Symbolic row dim of the modulation graph (samples × steps). */
export const MODULATION_ROWS = 'N';

/** Builds the modulation graph into `b` (see the file header). */
export function buildModulationGraph(
  b: GraphBuilder,
  w: WeightReader,
  config: FluxTransformerConfig,
  options: { linearPolicy?: LinearPolicy } = {},
): TransformerGraphDescriptor {
  const cfg = resolveTransformerConfig(config);
  const N = MODULATION_ROWS;
  const specs = modulationSpecs(cfg, allBlocks(cfg));
  const inputs: TensorSpec[] = [
    { name: 'timestep', dtype: 'float32', dims: [N] },
    ...(cfg.guidanceEmbeds ? [{ name: 'guidance', dtype: 'float32' as const, dims: [N] }] : []),
    { name: 'pooled_projections', dtype: 'float32', dims: [N, cfg.pooledProjectionDim] },
  ];
  for (const i of inputs) b.input(i.name, i.dtype, i.dims);
  const ctx: BuildContext = {
    b,
    w,
    cfg,
    policy: options.linearPolicy ?? plainLinear,
    fuse: true,
    linearLayers: [],
  };
  const temb = conditioningEmbedding(ctx, {
    timestep: 'timestep',
    guidance: cfg.guidanceEmbeds ? 'guidance' : undefined,
    pooled: 'pooled_projections',
  }); // [N, D]
  const y = fuseModulation(ctx, silu(b, temb), specs); // [N, M]
  const outputs: TensorSpec[] = [{ name: MODULATION_INPUT, dtype: 'float32', dims: [N, modulationWidth(specs)] }];
  b.output(y, MODULATION_INPUT, 'float32', outputs[0]!.dims);
  return { inputs, outputs, linearLayers: ctx.linearLayers };
}
