/**
 * @file The pipeline layer's public surface. It may import `src/runtime/` (through its index), `src/shared/` and
 * `engines/compiler/`; never the service or API layers. The service layer imports only this file.
 */

export { MODE_NAMES, UnknownModeError } from '../shared/vocabulary/modes.ts';
export { EngineCrashedError, EngineUnavailableError, ExecutorError } from './engine-errors.ts';
export { createFluxExecutor, type FluxProcessExecutorOptions } from './engine-process/index.ts';
export type {
  BenchmarkLatency,
  EngineHealth,
  ExecutorCapabilities,
  ExecutorModePlan,
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
export { ControlImageError, type ControlImageErrorCode } from './flux/control.ts';
export { editStepsRun } from './flux/edit.ts';
export { createInThreadExecutor, type FluxExecutorOptions, UnknownHandleError } from './flux/executor.ts';
export { FluxArgumentError, InvalidSizeError } from './flux/latents.ts';
export { FluxPipeline, type FluxPipelineOptions, type GenerateOptions, type GenerateResult } from './flux/pipeline.ts';
export { checkDimension, floatImageToRgb, ImageEncodeError } from './image.ts';
export {
  LORA_FORMATS,
  LoraError,
  type LoraErrorCode,
  type LoraErrorData,
  type LoraFormat,
  type LoraInfo,
  LoraManager,
  type LoraScan,
  type LoraSelection,
  loraFileName,
  loraSetKey,
  loraStrengthProblem,
  MAX_LORA_RANK,
  MAX_LORA_STRENGTH,
  sortedLoraSet,
} from './lora/index.ts';
export { type SupervisedExecutor, superviseEngine } from './supervisor.ts';
