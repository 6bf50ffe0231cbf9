/**
 * @file The runtime layer: the only code that imports `onnxruntime-node`. It may import `src/shared/` and nothing
 * above it; the pipeline reaches ORT through this file alone.
 */
export {
  EXECUTION_PROVIDERS,
  type ExecutionProvider,
  installedProviders,
  ProviderUnavailableError,
  parseProvider,
} from './device.ts';
export { type Engine, EngineLoader } from './engine.ts';
export {
  COMPONENTS,
  type ComponentName,
  componentPath,
  type EngineManifest,
  ManifestError,
  manifestSchema,
  readManifest,
} from './manifest.ts';
export { type HostTensor, RuntimeError, Session, type SessionOptions } from './session.ts';
