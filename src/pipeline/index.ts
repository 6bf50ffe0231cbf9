/**
 * @file The pipeline layer's public surface. It may import `src/runtime/` (through its index), `src/shared/` and
 * `engines/compiler/`; never the service or API layers. The service layer imports only this file.
 */

export { MODE_NAMES, UnknownModeError } from '../shared/vocabulary/modes.ts';
export {
  ControlImageError,
  type ControlImageErrorCode,
  type ControlImageOptions,
  decodeImageBytes,
  isPublicAddress,
  loadControlImageSource,
} from './control-image.ts';
export { EngineCrashedError, EngineUnavailableError, ExecutorError } from './engine-errors.ts';
export { createFluxExecutor, type FluxProcessExecutorOptions } from './engine-process/index.ts';
export type {
  BenchmarkLatency,
  EngineHealth,
  ExecutorCapabilities,
  ExecutorStats,
  LoraAdminPort,
  ModelInfo,
  PlanLayer,
  RgbImage,
  SampleHandle,
  SampleRequest,
  StepExecutor,
  StepResult,
} from './executor.ts';
export { createInThreadExecutor, type FluxExecutorOptions, UnknownHandleError } from './flux/executor.ts';
export { FluxArgumentError, InvalidSizeError } from './flux/latents.ts';
export { FluxPipeline, type FluxPipelineOptions, type GenerateOptions, type GenerateResult } from './flux/pipeline.ts';
export { contentTypeOf, encodeImage, extensionOf, IMAGE_FORMATS, type ImageFormat, isImageFormat } from './image.ts';
export {
  LORA_FORMATS,
  LoraError,
  type LoraErrorCode,
  type LoraFormat,
  type LoraInfo,
  LoraManager,
  type LoraScan,
  type LoraSelection,
  MAX_LORA_RANK,
} from './lora/index.ts';
export { type SupervisedExecutor, superviseEngine } from './supervisor.ts';
