/**
 * @file Public surface of the weights layer: safetensors I/O, dtype conversion, weight sources that speak diffusers
 * names (diffusers folders, sharded sets, BFL checkpoints) and model-repo resolution. Imports only `node:` modules.
 */
export {
  bflTransformerKeyMap,
  bflVaeKeyMap,
  isBflTransformer,
  isBflVae,
  openBflTransformer,
  openBflVae,
} from './bfl-keymap.ts';
export {
  bf16ToF32,
  bytesToF32,
  DTYPE_BYTES,
  type DType,
  type FloatDType,
  f16ToF32,
  f32BitsToF16Bits,
  f32ToBf16,
  f32ToBytes,
  f32ToF16,
  fp8E4M3ToF32,
  fp8E5M2ToF32,
  isDType,
  isFloatDType,
} from './dtype.ts';
export { WeightsError } from './errors.ts';
export { fingerprintWeights } from './fingerprint.ts';
export {
  type ComponentConfig,
  FLUX_AXES_DIMS_ROPE,
  FLUX_VAE_CONFIG,
  inferTransformerConfig,
  inferVaeConfig,
} from './infer-config.ts';
export { createMappedSource, type MappedTensor } from './mapped-source.ts';
export {
  type ComponentName,
  type ComponentWeights,
  type ModelRepo,
  type ResolveModelRepoOptions,
  resolveModelRepo,
  type WeightFormat,
} from './model-repo.ts';
export { openSafetensors, type SafetensorsFile, type TensorInfo } from './safetensors.ts';
export {
  type FloatTensorInput,
  type RawTensorInput,
  type TensorInput,
  writeSafetensors,
} from './safetensors-writer.ts';
export { openTextEncoderWeights, textEncoderKeyMap } from './text-encoder-keys.ts';
export {
  type ComponentFiles,
  locateComponentWeights,
  openComponentFiles,
  openComponentWeights,
  type WeightSource,
} from './weight-source.ts';
