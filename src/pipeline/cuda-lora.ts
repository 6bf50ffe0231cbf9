/**
 * @file LoRAs on the CUDA engine (issue 16): the engine's LoRA layout, the factors of one LoRA per engine layer, and
 * which LoRAs each engine process holds.
 *
 * Layout: the engine's transformer Linears as `engines/cuda/src/flux.cu` loads them, each named by its checkpoint
 * name (diffusers modules, fused parts joined by `+`: the double and single blocks' q/k/v are one Linear each), in
 * the shared LoRA layout vocabulary ({@link LoraEngineLayout}, parts with row offsets). The factors are the ONNX path's
 * feeds (`lora/feeds.ts`) of the LoRA alone at strength 1: A `[r, in]` with alpha/rank folded in, B `[out, r]` with
 * fused parts' rows in place and parts that share a down factor sharing their rank columns. The engine multiplies B
 * by each job's strength and concatenates a set's members along the rank (engines/cuda/src/lora.h).
 *
 * BFL Control LoRAs (FLUX.1-Canny/Depth-dev-lora): their `x_embedder` factor reads twice the model's input (the
 * latents, then the control-image latents; the engine widens only the adapter, the base product reads the first half,
 * as diffusers' zero-padded base weight does), their up-biases travel with the factors, and their QK-norm weights
 * ({@link cudaLoraNorms}) replace the base ones while a set holding the LoRA is active (not scaled by the strength).
 *
 * Residency: a LoRA is sent once per engine process (`lora_load`) and stays until unloaded or replaced (its file
 * changed); a set needs its members loaded before `prepare` names it. Over the engine's memory bound, LoRAs the
 * set does not need are unloaded and the load is tried once more.
 */
import {
  type CudaEngineClient,
  CudaEngineError,
  type CudaLoraLayer,
  type CudaLoraNorm,
  cudaLoraLoad,
  cudaLoraUnload,
} from '../runtime/cuda/index.ts';
import type { LoraEngineLayout, LoraLayerLayout } from '../shared/vocabulary/lora-layout.ts';
import { loraInputNames } from '../shared/vocabulary/lora-layout.ts';
import { type FluxTransformerConfig, resolveTransformerConfig } from '../shared/vocabulary/transformer-config.ts';
import { LoraError, type LoraErrorCode } from './lora/errors.ts';
import { type ActiveLora, buildLoraFeeds } from './lora/feeds.ts';
import { loraModelSpec } from './lora/model-layers.ts';
import type { ParsedLora } from './lora/types.ts';

/** The CUDA engine's LoRA-capable layers (every transformer Linear), as flux.cu stacks them. */
export function cudaLoraLayout(config: FluxTransformerConfig): LoraEngineLayout {
  const cfg = resolveTransformerConfig(config);
  const { linears } = loraModelSpec(config);
  const fused = new Map<string, string[]>();
  for (let i = 0; i < cfg.numLayers; i++) {
    const a = `transformer_blocks.${i}.attn`;
    fused.set(`${a}.to_q`, [`${a}.to_q`, `${a}.to_k`, `${a}.to_v`]);
    fused.set(`${a}.add_q_proj`, [`${a}.add_q_proj`, `${a}.add_k_proj`, `${a}.add_v_proj`]);
  }
  for (let j = 0; j < cfg.numSingleLayers; j++) {
    const a = `single_transformer_blocks.${j}.attn`;
    fused.set(`${a}.to_q`, [`${a}.to_q`, `${a}.to_k`, `${a}.to_v`]);
  }
  const inFused = new Set([...fused.values()].flat());
  const layers: LoraLayerLayout[] = [];
  for (const [module, shape] of linears) {
    const group = fused.get(module);
    if (group) {
      let offset = 0;
      const parts = group.map((name) => {
        const out = linears.get(name)!.outFeatures;
        const part = { name, offset, outFeatures: out };
        offset += out;
        return part;
      });
      layers.push({ name: group.join('+'), inFeatures: shape.inFeatures, outFeatures: offset, parts });
    } else if (!inFused.has(module)) {
      layers.push({ name: module, inFeatures: shape.inFeatures, outFeatures: shape.outFeatures });
    }
  }
  return { version: 1, layers, norms: [], inChannels: cfg.inChannels, baseInChannels: cfg.inChannels };
}

/** The engine layer a BFL Control LoRA widens: its input becomes `[latents; control latents]`. */
const CONTROL_LAYER = 'x_embedder';

/**
 * One LoRA's factors per engine layer it touches (strength 1); a control LoRA's `x_embedder` factor has its own
 * (doubled) input width. @throws LoraError (`unsupported`) for an input width a control image cannot fill
 */
export function cudaLoraLayers(layout: LoraEngineLayout, name: string, lora: ParsedLora): CudaLoraLayer[] {
  checkCudaLora(layout, name, lora);
  // The layout as this LoRA sees it: x_embedder as wide as its down factor (the base width for a plain LoRA).
  const own: LoraEngineLayout = {
    ...layout,
    inChannels: lora.inChannels,
    layers: layout.layers.map((l) => (l.name === CONTROL_LAYER ? { ...l, inFeatures: lora.inChannels } : l)),
  };
  const feeds = buildLoraFeeds(own, [{ name, lora, strength: 1 }], new Map());
  const out: CudaLoraLayer[] = [];
  for (const layer of own.layers) {
    const n = loraInputNames(layer.name);
    const a = feeds[n.a]!;
    const rank = a.dims[0]!;
    if (rank === 0) continue;
    const bias = feeds[n.bias]!.data as Float32Array;
    out.push({
      layer: layer.name,
      rank,
      inFeatures: layer.inFeatures,
      outFeatures: layer.outFeatures,
      a: a.data as Float32Array,
      b: feeds[n.b]!.data as Float32Array,
      ...(bias.some((v) => v !== 0) ? { bias } : {}),
    });
  }
  return out;
}

/** A BFL Control LoRA's replacement QK-norm weights, by the engine's norm names (the diffusers modules). */
export function cudaLoraNorms(lora: ParsedLora): CudaLoraNorm[] {
  return [...lora.norms].map(([norm, weight]) => ({ norm, weight }));
}

/**
 * Throws unless the CUDA engine runs `lora`: its input is the model's, or twice it (a BFL Control LoRA, whose
 * second half is the control image's latents). Cheap: builds nothing. @throws LoraError (`unsupported`)
 */
export function checkCudaLora(layout: LoraEngineLayout, name: string, lora: ParsedLora): void {
  if (lora.inChannels !== layout.baseInChannels && lora.inChannels !== 2 * layout.baseInChannels) {
    throw new LoraError(
      'unsupported',
      `needs a ${lora.inChannels}-channel input; the CUDA engine feeds ${layout.baseInChannels} (latents) or ` +
        `${2 * layout.baseInChannels} (latents and control-image latents)`,
      name,
    );
  }
}

/** A refused engine LoRA request as the LoRA layer's typed error (others pass through). */
export function loraErrorOf(err: unknown, lora?: string): unknown {
  if (err instanceof CudaEngineError && err.lora) {
    return new LoraError(err.lora.code as LoraErrorCode, err.message, lora, err.lora.keys, { cause: err });
  }
  return err;
}

/** See the file header. One per executor; engine processes are told apart by their client. */
export class CudaLoraResidency {
  readonly #layout: LoraEngineLayout;
  /** Per engine process: LoRA name → the parsed LoRA it holds (a re-parsed file is another object). */
  readonly #held = new WeakMap<CudaEngineClient, Map<string, ParsedLora>>();
  /** Loads and unloads run one at a time (prepare groups run concurrently). */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(layout: LoraEngineLayout) {
    this.#layout = layout;
  }

  get layout(): LoraEngineLayout {
    return this.#layout;
  }

  /** Checks that every member can run here (no engine call, nothing built). @throws LoraError */
  check(set: readonly ActiveLora[]): void {
    for (const m of set) checkCudaLora(this.#layout, m.name, m.lora);
  }

  /** Loads every member of `set` the engine does not hold yet. @throws LoraError */
  ensure(client: CudaEngineClient, set: readonly ActiveLora[]): Promise<void> {
    return this.#serial(async () => {
      const held = this.#heldBy(client);
      for (const m of set) {
        if (held.get(m.name) === m.lora) continue;
        const layers = cudaLoraLayers(this.#layout, m.name, m.lora);
        const norms = cudaLoraNorms(m.lora);
        try {
          await this.#load(client, held, m, layers, norms);
        } catch (err) {
          // Over the engine's LoRA memory bound: free what this set does not use, then try once more.
          const typed = loraErrorOf(err, m.name);
          const idle = [...held.keys()].filter((n) => !set.some((s) => s.name === n));
          if (!(typed instanceof LoraError) || typed.code !== 'unsupported' || idle.length === 0) throw typed;
          for (const n of idle) await this.#unload(client, held, n);
          await this.#load(client, held, m, layers, norms).catch((e: unknown) => {
            throw loraErrorOf(e, m.name);
          });
        }
      }
    });
  }

  /** Frees `name` on the engine if it holds it. */
  unload(client: CudaEngineClient, name: string): Promise<void> {
    return this.#serial(() => this.#unload(client, this.#heldBy(client), name));
  }

  async #load(
    client: CudaEngineClient,
    held: Map<string, ParsedLora>,
    m: ActiveLora,
    layers: CudaLoraLayer[],
    norms: CudaLoraNorm[],
  ): Promise<void> {
    held.delete(m.name); // a failed replacement leaves the engine without it (the engine unloads nothing on failure,
    // but the old copy is stale anyway: the next use loads again)
    await cudaLoraLoad(client, m.name, layers, norms);
    held.set(m.name, m.lora);
  }

  async #unload(client: CudaEngineClient, held: Map<string, ParsedLora>, name: string): Promise<void> {
    if (!held.has(name)) return;
    held.delete(name);
    if (!client.exitError) await cudaLoraUnload(client, name);
  }

  #heldBy(client: CudaEngineClient): Map<string, ParsedLora> {
    let m = this.#held.get(client);
    if (!m) {
      m = new Map();
      this.#held.set(client, m);
    }
    return m;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}
