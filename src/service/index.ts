/**
 * @file Public surface of the service layer: the generation service (scheduler, jobs, images, metrics) that the
 * transports in `api/` call. This layer may import `pipeline/` (through `./pipeline.ts` only), `shared/`, Node
 * built-ins, zod and prom-client; never GraphQL libraries or `runtime/`.
 */
export { type BatchDecision, type BatchPolicy, batchKey, nextBatch, type QueueEntry } from './batcher.ts';
export {
  failureCodeOf,
  JobCanceledError,
  JobFailedError,
  JobTimeoutError,
  LoraRequestError,
  NotFoundError,
  QueueFullError,
  ServiceError,
  ServiceUnavailableError,
  UnknownModelError,
  ValidationError,
} from './errors.ts';
export {
  type BackendDeps,
  type ControlImageSettings,
  createGenerationService,
  type DrainResult,
  GenerationService,
  type GenerationServiceOptions,
  type SubmitOptions,
} from './generation-service.ts';
export { ImageStore, type ImageStoreOptions, urlPathOf } from './image-store.ts';
export {
  finishJob,
  isTerminalEvent,
  type JobEvent,
  type JobOutcome,
  type TerminalJobEvent,
  terminalEvent,
} from './job-events.ts';
export { type JobTransition, logJobTransition, type ServiceLogger } from './job-log.ts';
export {
  type Caller,
  canAccess,
  elapsedMs,
  etaMs,
  isTerminal,
  type Job,
  type JobStatus,
  type StoredImage,
} from './jobs.ts';
export type { MeasuredLatency } from './measured.ts';
export {
  type ControlImageOptions,
  decodeImageBytes,
  fetchImageBytes,
  isPublicAddress,
  loadControlImage,
  loadControlImageSource,
} from './media/control-image.ts';
export {
  contentTypeOf,
  type EncodeImageOptions,
  encodeImage,
  extensionOf,
  IMAGE_FORMATS,
  type ImageFormat,
  isImageFormat,
} from './media/image-codec.ts';
export type { ServerMetrics } from './metrics.ts';
export type { ModePlanSummary, ModeQuality } from './mode-results.ts';
export { type ModeState, type WarmModes, warmOrder } from './mode-warmup.ts';
export type { PublishedLatency } from './model-specs.ts';
export { ASPECT_RATIOS, PUBLISHED_SPEC_SOURCE } from './model-specs.ts';
export { DEFAULT_LIMITS, type GenerationLimits, type ModelEntry, modelId } from './models.ts';
export type {
  ExecutorStats,
  LoraInfo,
  LoraScan,
  LoraSelection,
  StepExecutor,
} from './pipeline.ts';
export type {
  BackendHealth,
  EngineOffer,
  JobBackend,
  JobEventBus,
  JobQueue,
  JobRepository,
  LoraControl,
} from './ports.ts';
export {
  createInputSchema,
  type GenerateInput,
  loraStrength,
  MAX_CONTROL_IMAGE_BYTES,
  MAX_CONTROL_IMAGE_CHARS,
  MAX_CONTROL_IMAGE_PIXELS,
  MAX_LORA_NAME_CHARS,
  MAX_LORA_STRENGTH,
  MAX_LORAS_PER_REQUEST,
  REQUEST_DEFAULTS,
  toValidationError,
} from './request.ts';
