/**
 * @file The LoRA-targetable layers of a FLUX transformer, from its config: every diffusers Linear with its
 * `[out, in]` size, the QK-norm weights BFL Control LoRAs replace, and the BFL module names (docs/FLUX_SPEC.md §5.7) that
 * kohya and BFL Control files use, with how each maps onto diffusers modules (fused rows, swapped halves).
 */
import { type FluxTransformerConfig, resolveTransformerConfig } from '../../shared/vocabulary/transformer-config.ts';

/** `[out, in]` of one Linear. */
export interface LinearShape {
  outFeatures: number;
  inFeatures: number;
}

/** A BFL module and the diffusers modules its output rows are made of, in row order. */
export interface BflModule {
  /** Diffusers modules with their row counts; several for fused `qkv` / `linear1`. */
  parts: { module: string; outFeatures: number }[];
  /** `final_layer.adaLN_modulation.1`: BFL orders (shift, scale), diffusers (scale, shift): swap the row halves. */
  swapHalves?: boolean;
}

/** What the LoRA parsers validate against. */
export interface LoraModelSpec {
  linears: ReadonlyMap<string, LinearShape>;
  /** QK-norm module (`transformer_blocks.0.attn.norm_q`) → weight length. */
  norms: ReadonlyMap<string, number>;
  /** BFL module name (dotted, `double_blocks.0.img_attn.qkv`) → diffusers parts. */
  bfl: ReadonlyMap<string, BflModule>;
  /** BFL norm-scale key stem (`double_blocks.0.img_attn.norm.query_norm`) → diffusers norm module. */
  bflNorms: ReadonlyMap<string, string>;
  inChannels: number;
}

/** Builds the {@link LoraModelSpec} of a transformer config (diffusers defaults for absent fields). */
export function loraModelSpec(config: FluxTransformerConfig): LoraModelSpec {
  const cfg = resolveTransformerConfig(config);
  const { dim: d, mlpDim: mlp, headDim } = cfg;
  const linears = new Map<string, LinearShape>();
  const norms = new Map<string, number>();
  const bfl = new Map<string, BflModule>();
  const bflNorms = new Map<string, string>();
  const lin = (module: string, outFeatures: number, inFeatures: number) =>
    linears.set(module, { outFeatures, inFeatures });
  // A 1:1 BFL module; fused ones are added explicitly below.
  const one = (bflName: string, module: string) =>
    bfl.set(bflName, { parts: [{ module, outFeatures: linears.get(module)!.outFeatures }] });

  lin('x_embedder', d, cfg.inChannels);
  lin('context_embedder', d, cfg.jointAttentionDim);
  one('img_in', 'x_embedder');
  one('txt_in', 'context_embedder');
  const embedders: [string, string, number][] = [
    ['timestep_embedder', 'time_in', 256],
    ['text_embedder', 'vector_in', cfg.pooledProjectionDim],
    ...(cfg.guidanceEmbeds ? [['guidance_embedder', 'guidance_in', 256] as [string, string, number]] : []),
  ];
  for (const [e, b, inF] of embedders) {
    lin(`time_text_embed.${e}.linear_1`, d, inF);
    lin(`time_text_embed.${e}.linear_2`, d, d);
    one(`${b}.in_layer`, `time_text_embed.${e}.linear_1`);
    one(`${b}.out_layer`, `time_text_embed.${e}.linear_2`);
  }
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `transformer_blocks.${i}`;
    const q = `double_blocks.${i}`;
    lin(`${p}.norm1.linear`, 6 * d, d);
    lin(`${p}.norm1_context.linear`, 6 * d, d);
    for (const m of ['to_q', 'to_k', 'to_v', 'add_q_proj', 'add_k_proj', 'add_v_proj', 'to_out.0', 'to_add_out']) {
      lin(`${p}.attn.${m}`, d, d);
    }
    for (const ff of ['ff', 'ff_context']) {
      lin(`${p}.${ff}.net.0.proj`, mlp, d);
      lin(`${p}.${ff}.net.2`, d, mlp);
    }
    for (const n of ['norm_q', 'norm_k', 'norm_added_q', 'norm_added_k']) norms.set(`${p}.attn.${n}`, headDim);
    // Image stream (img_*) and text stream (txt_*), docs/FLUX_SPEC.md §5.7.
    for (const [s, qkv, proj, ff, mod, nq, nk] of [
      ['img', ['to_q', 'to_k', 'to_v'], 'to_out.0', 'ff', 'norm1', 'norm_q', 'norm_k'],
      [
        'txt',
        ['add_q_proj', 'add_k_proj', 'add_v_proj'],
        'to_add_out',
        'ff_context',
        'norm1_context',
        'norm_added_q',
        'norm_added_k',
      ],
    ] as const) {
      bfl.set(`${q}.${s}_attn.qkv`, { parts: qkv.map((m) => ({ module: `${p}.attn.${m}`, outFeatures: d })) });
      one(`${q}.${s}_attn.proj`, `${p}.attn.${proj}`);
      one(`${q}.${s}_mlp.0`, `${p}.${ff}.net.0.proj`);
      one(`${q}.${s}_mlp.2`, `${p}.${ff}.net.2`);
      one(`${q}.${s}_mod.lin`, `${p}.${mod}.linear`);
      bflNorms.set(`${q}.${s}_attn.norm.query_norm`, `${p}.attn.${nq}`);
      bflNorms.set(`${q}.${s}_attn.norm.key_norm`, `${p}.attn.${nk}`);
    }
  }
  for (let j = 0; j < cfg.numSingleLayers; j++) {
    const p = `single_transformer_blocks.${j}`;
    const q = `single_blocks.${j}`;
    lin(`${p}.norm.linear`, 3 * d, d);
    for (const m of ['to_q', 'to_k', 'to_v']) lin(`${p}.attn.${m}`, d, d);
    lin(`${p}.proj_mlp`, mlp, d);
    lin(`${p}.proj_out`, d, d + mlp);
    norms.set(`${p}.attn.norm_q`, headDim);
    norms.set(`${p}.attn.norm_k`, headDim);
    // linear1 rows: q, k, v (D each), then the MLP (4D).
    bfl.set(`${q}.linear1`, {
      parts: [
        ...['to_q', 'to_k', 'to_v'].map((m) => ({ module: `${p}.attn.${m}`, outFeatures: d })),
        { module: `${p}.proj_mlp`, outFeatures: mlp },
      ],
    });
    one(`${q}.linear2`, `${p}.proj_out`);
    one(`${q}.modulation.lin`, `${p}.norm.linear`);
    bflNorms.set(`${q}.norm.query_norm`, `${p}.attn.norm_q`);
    bflNorms.set(`${q}.norm.key_norm`, `${p}.attn.norm_k`);
  }
  lin('norm_out.linear', 2 * d, d);
  lin('proj_out', cfg.outFeatures, d);
  one('final_layer.linear', 'proj_out');
  bfl.set('final_layer.adaLN_modulation.1', {
    parts: [{ module: 'norm_out.linear', outFeatures: 2 * d }],
    swapHalves: true,
  });
  return { linears, norms, bfl, bflNorms, inChannels: cfg.inChannels };
}
