/**
 * @file BFL Control LoRAs on the CUDA engine (issue 16): a sample's control input as the ONNX path makes it
 * (`flux/control.ts`, diffusers' `FluxControlPipeline`), with the engine's VAE encoder doing the encoding:
 *
 *   control image → resized to the output W×H, [−1, 1] NCHW [1, 3, H, W] (`controlPixels`, on the host)
 *   → engine `encode` with ε = the first 16·h·w normals of `manual_seed(seed)` (the posterior's sample)
 *   → packed `((mean + exp(logvar/2)·ε) − shift)·scaling` [L, 64]
 *
 * and the starting noise is the generator's next 16·h·w normals (diffusers samples the control latent first), unless
 * the request gives explicit latents. `prepare` then sends the job's control latents once (`control`: true); each
 * engine step feeds `[latents; control]` to the control set's widened x_embedder.
 */

import type { RgbImage } from './executor.ts';
import { controlPixels } from './flux/control.ts';
import type { SamplingImageEncoder } from './flux/edit.ts';
import type { LatentGrid } from './flux/latents.ts';
import { packLatents } from './flux/latents.ts';
import { TorchCpuGenerator } from './flux/noise.ts';

/** What {@link cudaControlSample} needs. */
export interface CudaControlInput {
  image: RgbImage;
  seed: number;
  grid: LatentGrid;
  height: number;
  width: number;
  /** Latent channels of the VAE (16). */
  latentChannels: number;
  /** The engine's `encode` for one image: pixels `[1, 3, H, W]`, normals `[1, 16, H/8, W/8]` → packed `[L, 64]`. */
  encode: SamplingImageEncoder;
  /** Explicit packed starting latents `[L, 64]`; when absent they are drawn after ε from the same generator. */
  latents?: ArrayLike<number>;
}

/**
 * One control sample's packed control latents and starting latents, each `[L, 64]`, in diffusers' generator order.
 * @throws ControlImageError (`param: 'controlImage'`) for a malformed image
 */
export async function cudaControlSample(
  input: CudaControlInput,
): Promise<{ control: Float32Array; latents: Float32Array }> {
  const { grid, latentChannels: c } = input;
  const pixels = await controlPixels(input.image, input.height, input.width); // [1, 3, H, W]
  const gen = new TorchCpuGenerator(input.seed);
  const n = c * grid.h * grid.w;
  const eps = gen.randn(n); // first: `latent_dist.sample(generator)` runs before `prepare_latents`
  const control = await input.encode(pixels, Float32Array.from(eps), input.height, input.width);
  const latents = input.latents ? Float32Array.from(input.latents) : packLatents(gen.randn(n), 1, c, grid.h, grid.w);
  return { control, latents };
}
