/**
 * @file The CUDA engine's LoRA requests (engines/cuda/PROTOCOL.md), sent through {@link CudaEngineClient.request}:
 *
 * - `lora_load`: a LoRA's factors per engine layer (the Linear's checkpoint name, parts joined by `+`), A `[r, in]`
 *   with alpha/rank folded in, B `[out, r]`, optional up-bias `[out]`, as float32 in the payload in layer order. A
 *   LoRA whose payload would exceed {@link MAX_LORA_FRAME_BYTES} goes over several frames (`more`: true on all but the
 *   last, `append`: true on all but the first); the engine loads it when the last arrives, all or nothing.
 * - `lora_unload`: forgets a LoRA (jobs prepared with it keep their built set until released).
 * - the per-job set is `prepare`'s `loras` ({@link CudaPrepareArgs.loras}).
 *
 * Frames are built by a pure function ({@link loraLoadFramesOf}) so their layout is testable without an engine.
 */

import type { RequestFrame } from './edit-requests.ts';
import type { CudaEngineClient } from './engine-client.ts';

/** Largest payload of one `lora_load` frame (the frame's length field is 32-bit; stay well under it). */
export const MAX_LORA_FRAME_BYTES = 512 * 2 ** 20;

/** One engine layer's factors. */
export interface CudaLoraLayer {
  /** The engine Linear's checkpoint name without the component, e.g. `transformer_blocks.0.attn.to_q+…to_k+…to_v`. */
  layer: string;
  rank: number;
  inFeatures: number;
  outFeatures: number;
  /** `[rank, inFeatures]`, alpha/rank folded in. */
  a: Float32Array;
  /** `[outFeatures, rank]`. */
  b: Float32Array;
  /** `[outFeatures]` up-bias (BFL Control), alpha/rank folded in. */
  bias?: Float32Array;
}

/** A QK-norm weight a BFL Control LoRA replaces while a set holding it is active (not scaled by the strength). */
export interface CudaLoraNorm {
  /** The norm module, e.g. `transformer_blocks.0.attn.norm_q`. */
  norm: string;
  /** The replacement weight `[dim]`. */
  weight: Float32Array;
}

/** What the engine reports after a load or unload. */
export interface CudaLoraState {
  /** Device bytes of adapters now held (loaded factors and built sets). */
  loraBytes: number;
  loraMaxBytes: number;
  /** LoRA names loaded on the engine. */
  loras: string[];
}

/**
 * The `lora_load` frames of one LoRA. BFL Control parts: an `x_embedder` layer may read twice the model's input
 * (`[latents; control latents]`), layers may carry an up-bias, and `norms` (replacement QK-norm weights) travel in the
 * last frame after its layers (`norms: [{norm, dim}]`, payload `[dim]` each).
 * @throws RangeError when a layer's arrays do not match its shape
 */
export function loraLoadFramesOf(
  name: string,
  layers: readonly CudaLoraLayer[],
  maxPayloadBytes = MAX_LORA_FRAME_BYTES,
  norms: readonly CudaLoraNorm[] = [],
): RequestFrame[] {
  const frames: RequestFrame[] = [];
  let entries: object[] = [];
  let payload: Float32Array[] = [];
  let bytes = 0;
  const flush = (more: boolean) => {
    if (!more && norms.length > 0) {
      payload.push(...norms.map((n) => n.weight));
    }
    frames.push({
      header: {
        op: 'lora_load',
        name,
        layers: entries,
        ...(!more && norms.length > 0 ? { norms: norms.map((n) => ({ norm: n.norm, dim: n.weight.length })) } : {}),
        ...(more ? { more: true } : {}),
        ...(frames.length > 0 ? { append: true } : {}),
      },
      payload,
    });
    entries = [];
    payload = [];
    bytes = 0;
  };
  for (const l of layers) {
    const { rank: r, inFeatures: inF, outFeatures: out } = l;
    if (l.a.length !== r * inF) throw new RangeError(`lora_load ${name}: ${l.layer} A must hold ${r * inF} values`);
    if (l.b.length !== out * r) throw new RangeError(`lora_load ${name}: ${l.layer} B must hold ${out * r} values`);
    if (l.bias && l.bias.length !== out) throw new RangeError(`lora_load ${name}: ${l.layer} bias must hold ${out}`);
    const size = 4 * (l.a.length + l.b.length + (l.bias?.length ?? 0));
    if (entries.length > 0 && bytes + size > maxPayloadBytes) flush(true);
    entries.push({ layer: l.layer, rank: r, in: inF, out, ...(l.bias ? { bias: true } : {}) });
    payload.push(l.a, l.b, ...(l.bias ? [l.bias] : []));
    bytes += size;
  }
  flush(false);
  return frames;
}

/** Loads (or replaces) a LoRA on the engine. @throws CudaEngineError (with `lora.code` when refused) */
export async function cudaLoraLoad(
  client: CudaEngineClient,
  name: string,
  layers: readonly CudaLoraLayer[],
  norms: readonly CudaLoraNorm[] = [],
): Promise<CudaLoraState & { bytes: number }> {
  let last: Record<string, unknown> = {};
  for (const f of loraLoadFramesOf(name, layers, MAX_LORA_FRAME_BYTES, norms))
    last = (await client.request(f.header, f.payload)).header;
  return { bytes: Number(last.bytes), ...stateOf(last) };
}

/** Forgets a LoRA on the engine; false when it was not loaded. */
export async function cudaLoraUnload(
  client: CudaEngineClient,
  name: string,
): Promise<CudaLoraState & { unloaded: boolean }> {
  const { header } = await client.request({ op: 'lora_unload', name });
  return { unloaded: header.unloaded === true, ...stateOf(header) };
}

function stateOf(h: Record<string, unknown>): CudaLoraState {
  return {
    loraBytes: Number(h.lora_bytes ?? 0),
    loraMaxBytes: Number(h.lora_max_bytes ?? 0),
    loras: Array.isArray(h.loras) ? h.loras.map(String) : [],
  };
}
