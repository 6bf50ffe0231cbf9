/**
 * @file The ONNX graph of the FLUX transformer (diffusers `FluxTransformer2DModel`, docs/FLUX_SPEC.md §5), built straight
 * from its safetensors weights, in float32, computing exactly what diffusers computes (the `original` engine).
 *
 * Graph inputs (B, L, T dynamic; S = T + L):
 * - `hidden_states` `[B, L, in_channels]` packed latents
 * - `encoder_hidden_states` `[B, T, joint_attention_dim]` T5 output
 * - `pooled_projections` `[B, pooled_projection_dim]` CLIP pooled
 * - `timestep` `[B]` σ, and `guidance` `[B]` (only with `guidance_embeds`); both ×1000 inside, per sample
 * - `rope_cos`, `rope_sin` `[S, head_dim]`, computed on the CPU (`src/pipeline/flux/rope.ts`), text rows first
 * - with `modulationInput` (XL): `modulation` `[B, M]` (every modulation Linear's output, fused; computed per sample
 *   and step by `transformer-modulation.ts`) replaces `pooled_projections`, `timestep` and `guidance`
 *
 * Output: `sample` `[B, L, patch² · out_channels]`, the velocity.
 *
 * Every Linear goes through a {@link LinearPolicy} under its diffusers module name; see `linear-policy.ts`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type FluxTransformerConfig,
  resolveTransformerConfig,
} from '../../../src/shared/vocabulary/transformer-config.ts';
import { ExternalDataWriter } from '../onnx/external-data.ts';
import { type Dim, type DType, GraphBuilder } from '../onnx/graph-builder.ts';
import { layerNorm, silu, split, type WeightReader } from '../onnx/nn.ts';
import { type LinearPolicy, plainLinear } from './linear-policy.ts';
import { doubleBlock, singleBlock } from './transformer-blocks.ts';
import { conditioningEmbedding } from './transformer-embeddings.ts';
import {
  allBlocks,
  type FusedGraphOptions,
  fusedContext,
  MODULATION_INPUT,
  modulationSpecs,
  modulationWidth,
} from './transformer-fused.ts';
import { applyLinear, type BuildContext, FLUX_NORM_EPS, type TransformerContext } from './transformer-layers.ts';

/** How to build the transformer graph (the XL switches `fusedAttention`, `precomputeModulation`: `transformer-fused.ts`). */
export interface TransformerGraphOptions extends FusedGraphOptions {
  /** Query blocks of the reference attention (see `sdpaChunked`): same result, 1/N of its memory. @default 1 */
  attentionQueryChunks?: number;
  /** Emits every Linear layer. @default plainLinear (float32 MatMul) */
  linearPolicy?: LinearPolicy;
  /**
   * Fuse Linears that share an input into one GEMM (the `XL` engine): double-block `to_q/k/v` → `attn.to_qkv`,
   * `add_q/k/v_proj` → `attn.to_added_qkv`, `norm1.linear` + `norm1_context.linear` → `norm1_joint.linear`, and the
   * single block's `attn.to_q/k/v` + `proj_mlp` → `to_qkv_mlp`. @default false
   */
  fuseProjections?: boolean;
  /** Emits the QK-norm weights (see `BuildContext.normWeight`). @default initializers */
  normWeightPolicy?: (b: GraphBuilder, module: string, weight: Float32Array) => string;
}

/** One graph input or output. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  dims: Dim[];
}

/** What {@link buildTransformerGraph} built. */
export interface TransformerGraphDescriptor {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  /** Every layer name the Linear policy was called with, in graph order (fused names when fusing). */
  linearLayers: string[];
}

/** Symbolic dims of the graph: batch, image tokens, text tokens, joint tokens. */
export const TRANSFORMER_DIMS = { batch: 'B', image: 'L', text: 'T', joint: 'S' } as const;

/**
 * Adds the whole FLUX transformer to `b` (inputs, nodes, `sample` output) from the diffusers-named weights `w`.
 * @throws TransformerCompileError naming the tensor or config field when a weight is missing or its shape does not
 *   match `config`.
 */
export function buildTransformerGraph(
  b: GraphBuilder,
  w: WeightReader,
  config: FluxTransformerConfig,
  options: TransformerGraphOptions = {},
): TransformerGraphDescriptor {
  const cfg = resolveTransformerConfig(config);
  const { batch: B, image: L, text: T, joint: S } = TRANSFORMER_DIMS;
  const modulationInput = options.modulationInput ?? false;
  if (modulationInput && !options.precomputeModulation)
    throw new Error('buildTransformerGraph: modulationInput needs precomputeModulation');
  const inputs: TensorSpec[] = [
    { name: 'hidden_states', dtype: 'float32', dims: [B, L, cfg.inChannels] },
    { name: 'encoder_hidden_states', dtype: 'float32', dims: [B, T, cfg.jointAttentionDim] },
    ...(modulationInput
      ? [
          {
            name: MODULATION_INPUT,
            dtype: 'float32' as const,
            dims: [B, modulationWidth(modulationSpecs(cfg, allBlocks(cfg)))],
          },
        ]
      : [
          { name: 'pooled_projections', dtype: 'float32' as const, dims: [B, cfg.pooledProjectionDim] },
          { name: 'timestep', dtype: 'float32' as const, dims: [B] },
          ...(cfg.guidanceEmbeds ? [{ name: 'guidance', dtype: 'float32' as const, dims: [B] }] : []),
        ]),
    { name: 'rope_cos', dtype: 'float32', dims: [S, cfg.headDim] },
    { name: 'rope_sin', dtype: 'float32', dims: [S, cfg.headDim] },
  ];
  for (const i of inputs) b.input(i.name, i.dtype, i.dims);

  const base: BuildContext = {
    b,
    w,
    cfg,
    policy: options.linearPolicy ?? plainLinear,
    fuse: options.fuseProjections ?? false,
    linearLayers: [],
    normWeight: options.normWeightPolicy,
    attentionQueryChunks: options.attentionQueryChunks ?? 1,
  };
  const spec = (name: string, outFeatures: number, inFeatures: number) => ({ name, outFeatures, inFeatures });

  let x = applyLinear(base, 'hidden_states', spec('x_embedder', cfg.dim, cfg.inChannels)); // [B, L, D]
  // With the modulation as an input nothing reads temb: every modulation Linear is in `precomputed`.
  const temb = modulationInput
    ? undefined
    : conditioningEmbedding(base, {
        timestep: 'timestep',
        guidance: cfg.guidanceEmbeds ? 'guidance' : undefined,
        pooled: 'pooled_projections',
      }); // [B, D]
  let c = applyLinear(base, 'encoder_hidden_states', spec('context_embedder', cfg.dim, cfg.jointAttentionDim)); // [B, T, D]

  // [T, L] from the embedded streams' shapes: splits the joint sequence back without fixing either length.
  const seqLen = (v: string) => b.op('Shape', [v], { start: 1, end: 2 });
  const siluTemb = temb === undefined ? '' : silu(b, temb);
  const ctx: TransformerContext = {
    ...base,
    ropeCos: 'rope_cos',
    ropeSin: 'rope_sin',
    seqSplit: b.op('Concat', [seqLen(c), seqLen(x)], { axis: 0 }),
    siluTemb,
    ...fusedContext(base, siluTemb, 'rope_cos', 'rope_sin', options, allBlocks(base.cfg)),
  };

  for (let i = 0; i < cfg.numLayers; i++) ({ x, c } = doubleBlock(ctx, i, x, c));
  // diffusers re-concatenates and re-splits in every single block; concatenating once is the same values.
  let z = b.op('Concat', [c, x], { axis: 1 }); // [B, S, D], text first
  for (let j = 0; j < cfg.numSingleLayers; j++) z = singleBlock(ctx, j, z);
  const [, img] = b.node('Split', [z, ctx.seqSplit], { axis: 1 }, { outputs: 2 }) as [string, string]; // [B, L, D]

  // norm_out (AdaLayerNormContinuous): emb [B, 2D] chunks in the order scale, shift (docs/FLUX_SPEC.md §9 pitfall 1).
  const sample = b.scope('norm_out', () => {
    const emb = applyLinear(ctx, ctx.siluTemb, spec('norm_out.linear', 2 * cfg.dim, cfg.dim));
    const [scale, shift] = split(b, b.op('Unsqueeze', [emb, b.constI64([1])]), -1, [cfg.dim, cfg.dim]) as [
      string,
      string,
    ]; // [B, 1, D] each
    const normed = layerNorm(b, img, cfg.dim, FLUX_NORM_EPS);
    const y = b.op('Add', [b.op('Mul', [normed, b.op('Add', [b.constF32(1), scale])]), shift]);
    return applyLinear(ctx, y, spec('proj_out', cfg.outFeatures, cfg.dim)); // [B, L, out]
  });

  const outputs: TensorSpec[] = [{ name: 'sample', dtype: 'float32', dims: [B, L, cfg.outFeatures] }];
  b.output(sample, 'sample', 'float32', outputs[0]!.dims);
  return { inputs, outputs, linearLayers: ctx.linearLayers };
}

/** Where {@link compileTransformer} wrote the model. */
export interface CompiledTransformer {
  /** The `.onnx` file. */
  modelPath: string;
  /** Its external-data file (beside it; ORT resolves it relative to the model). */
  dataPath: string;
  descriptor: TransformerGraphDescriptor;
}

/**
 * Builds the transformer graph and writes `<outDir>/<fileName>` plus `<fileName>.data` (initializers over 1 KiB are
 * streamed there as they are added, so memory holds one layer's weights at a time).
 */
export function compileTransformer(
  w: WeightReader,
  config: FluxTransformerConfig,
  outDir: string,
  options: TransformerGraphOptions & { fileName?: string } = {},
): CompiledTransformer {
  const fileName = options.fileName ?? 'transformer.onnx';
  const modelPath = join(outDir, fileName);
  const data = new ExternalDataWriter(`${modelPath}.data`);
  try {
    const b = new GraphBuilder({ name: 'flux_transformer', externalData: data });
    const descriptor = buildTransformerGraph(b, w, config, options);
    writeFileSync(
      modelPath,
      b.encode({ component: 'flux_transformer', fuse_projections: String(options.fuseProjections ?? false) }),
    );
    return { modelPath, dataPath: data.path, descriptor };
  } finally {
    data.close();
  }
}
