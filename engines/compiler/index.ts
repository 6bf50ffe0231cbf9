/**
 * @file Public API of the engine compiler, a build-time tool: compile a mode's engines into the cache (manifest +
 * ONNX graphs) and measure/plan the compressed modes. The server reaches it only from its build path
 * (`src/pipeline/flux/engine-cache.ts`, `src/pipeline/flux/elastic-plan.ts`, run by `fluxql compile` and the startup
 * warm-up); everything else the two sides share is the vocabulary in `src/shared/vocabulary/` and the manifests.
 */
export {
  COMPILER_VERSION,
  type CompileOptions,
  compileEngine,
  compileVaeEncoder,
  PlanRequiredError,
} from './compile.ts';
export { type Measurements, measureLayers, type PlannerInput, planModes } from './planner/plan.ts';
