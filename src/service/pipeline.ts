/**
 * @file The one place the service layer reaches into `pipeline/`, and only through its public `index.ts`: the
 * step-level executor contract and image encoding. One file keeps the layer boundary easy to check.
 */
export type {
  BenchmarkLatency,
  EngineHealth,
  ExecutorCapabilities,
  ExecutorStats,
  LoraAdminPort,
  LoraInfo,
  LoraScan,
  LoraSelection,
  ModelInfo,
  PlanLayer,
  RgbImage,
  SampleHandle,
  SampleRequest,
  StepExecutor,
  StepResult,
} from '../pipeline/index.ts';
export {
  ControlImageError,
  type ControlImageOptions,
  contentTypeOf,
  decodeImageBytes,
  encodeImage,
  extensionOf,
  IMAGE_FORMATS,
  type ImageFormat,
  LORA_FORMATS,
  loadControlImageSource,
  MAX_LORA_RANK,
} from '../pipeline/index.ts';
