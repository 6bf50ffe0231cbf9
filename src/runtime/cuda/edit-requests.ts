/**
 * @file The CUDA engine's editing requests (engines/cuda/PROTOCOL.md), sent through {@link CudaEngineClient.request}:
 *
 * - `encode`: pixels `[B, 3, H, W]` in [−1, 1] and the posterior's normals `eps` `[B, 16, H/8, W/8]` (the request's
 *   torch generator, drawn on the host) → packed image latents `[B, (H/16)(W/16), 64]`,
 *   `((mean + exp(logvar/2)·eps) − shift)·scaling`; or the moments (`mean`, `logvar`, each `[B, 16, H/8, W/8]`).
 * - `prepare` with edits: true CFG (`true_cfg`, one scale per sample; the ids hold the B prompts then the B negative
 *   prompts, and each step runs the transformer on 2B rows and combines `neg + scale·(pos − neg)`), and inpainting
 *   (`inpaint`: the packed image latents, noise and mask `[B, L, 64]` after the latents; the engine blends
 *   `(1 − m)·(σ_next·noise + (1 − σ_next)·x0) + m·latents` after each step), and BFL Control (`control`: the packed
 *   control-image latents `[B, L, 64]` last; the job's LoRA set must hold a BFL Control LoRA).
 *
 * The frames are built by pure functions ({@link encodeFrameOf}, {@link editPrepareFrameOf}) so their layout is
 * testable without an engine.
 */
import { type CudaEngineClient, type CudaPrepareArgs, prepareFrameOf, type RequestFrame } from './engine-client.ts';

/** Latent channels the engine's `encode` packs (FLUX's VAE). */
const LATENT_CHANNELS = 16;

/** Arguments of {@link cudaEncode}. */
export interface CudaEncodeArgs {
  batch: number;
  height: number;
  width: number;
  /** NCHW `[B, 3, H, W]`, values in [−1, 1]. */
  pixels: Float32Array;
  /** NCHW `[B, 16, H/8, W/8]` standard normals; absent: the posterior mean. */
  eps?: Float32Array;
}

export type { RequestFrame } from './engine-client.ts';

/** The `encode` request asking for packed image latents. @throws RangeError when a length does not match the shape */
export function encodeFrameOf(a: CudaEncodeArgs, output: 'latents' | 'moments' = 'latents'): RequestFrame {
  const px = a.batch * 3 * a.height * a.width;
  if (a.pixels.length !== px) throw new RangeError(`encode: pixels must hold ${px} values, got ${a.pixels.length}`);
  const ne = a.batch * LATENT_CHANNELS * (a.height / 8) * (a.width / 8);
  if (a.eps && a.eps.length !== ne) throw new RangeError(`encode: eps must hold ${ne} values, got ${a.eps.length}`);
  return {
    header: {
      op: 'encode',
      batch: a.batch,
      height: a.height,
      width: a.width,
      output,
      noise: a.eps ? 'payload' : 'none',
    },
    payload: a.eps ? [a.pixels, a.eps] : [a.pixels],
  };
}

/** Runs the engine's VAE encoder: packed image latents `[B, (H/16)(W/16), 64]`. */
export async function cudaEncode(client: CudaEngineClient, a: CudaEncodeArgs): Promise<Float32Array> {
  const f = encodeFrameOf(a);
  const { payload } = await client.request(f.header, f.payload);
  return floats(payload);
}

/** Runs the engine's VAE encoder: the posterior's moments, each NCHW `[B, 16, H/8, W/8]`. */
export async function cudaEncodeMoments(
  client: CudaEngineClient,
  a: Omit<CudaEncodeArgs, 'eps'>,
): Promise<{ mean: Float32Array; logvar: Float32Array }> {
  const f = encodeFrameOf(a, 'moments');
  const { payload } = await client.request(f.header, f.payload);
  const all = floats(payload);
  const half = all.length / 2;
  return { mean: all.subarray(0, half), logvar: all.subarray(half) };
}

/** A `prepare` with the edit fields. */
export interface CudaEditPrepareArgs extends CudaPrepareArgs {
  /** Explicit packed starting latents `[B, L, 64]` (required with edits). */
  latents: Float32Array;
  /** True CFG: one scale per sample; `clipIds` / `t5Ids` then hold 2B rows (prompts, then negative prompts). */
  trueCfg?: readonly number[];
  /** Inpainting: packed `[B, L, 64]` each. */
  inpaint?: { imageLatents: Float32Array; noise: Float32Array; mask: Float32Array };
  /**
   * BFL Control: the packed control-image latents `[B, L, 64]` (from {@link cudaEncode}), required exactly when the
   * job's LoRA set holds a BFL Control LoRA; every step feeds `[latents; control]` to the widened x_embedder.
   */
  control?: Float32Array;
}

/** The `prepare` request with edits. @throws RangeError when a length does not match the batch */
export function editPrepareFrameOf(a: CudaEditPrepareArgs): RequestFrame {
  const rows = a.trueCfg ? 2 * a.batch : a.batch;
  if (a.trueCfg && a.trueCfg.length !== a.batch) {
    throw new RangeError(`prepare: true_cfg must hold ${a.batch} scales, got ${a.trueCfg.length}`);
  }
  if (a.clipIds.length !== rows * 77) throw new RangeError(`prepare: clip ids must be [${rows}, 77]`);
  if (a.t5Ids.length !== rows * a.t5Len) throw new RangeError(`prepare: T5 ids must be [${rows}, ${a.t5Len}]`);
  const n = a.batch * (a.height / 16) * (a.width / 16) * 64;
  for (const [name, v] of [
    ['latents', a.latents],
    ['image latents', a.inpaint?.imageLatents],
    ['noise', a.inpaint?.noise],
    ['mask', a.inpaint?.mask],
    ['control latents', a.control],
  ] as const) {
    if (v && v.length !== n) throw new RangeError(`prepare: ${name} must hold ${n} values, got ${v.length}`);
  }
  const f = prepareFrameOf(a);
  if (a.inpaint) f.payload.push(a.inpaint.imageLatents, a.inpaint.noise, a.inpaint.mask);
  if (a.control) f.payload.push(a.control);
  return {
    header: {
      ...f.header,
      ...(a.trueCfg ? { true_cfg: [...a.trueCfg] } : {}),
      ...(a.inpaint ? { inpaint: true } : {}),
      ...(a.control ? { control: true } : {}),
    },
    payload: f.payload,
  };
}

/** Prepares an edit job; returns the engine's job id and the steps it runs. */
export async function cudaPrepareEdit(
  client: CudaEngineClient,
  a: CudaEditPrepareArgs,
): Promise<{ job: number; steps: number; ms: number }> {
  const f = editPrepareFrameOf(a);
  const { header: h } = await client.request(f.header, f.payload);
  return { job: Number(h.job), steps: Number(h.steps), ms: Number(h.ms) };
}

/** A payload as float32 values (copied when unaligned). */
function floats(payload: Uint8Array): Float32Array {
  if (payload.byteOffset % 4 === 0) return new Float32Array(payload.buffer, payload.byteOffset, payload.byteLength / 4);
  return new Float32Array(payload.slice().buffer);
}
