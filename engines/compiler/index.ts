/**
 * @file Public API of the engine compiler, a build-time tool: compile a mode's engines into the cache (manifest +
 * ONNX graphs) and measure/plan the compressed modes. `src/` never imports it: the server's pipeline receives it as
 * a port (`src/pipeline/flux/compiler-port.ts`) filled by `port.ts`; everything else the two sides share is the
 * vocabulary in `src/shared/vocabulary/` and the manifests.
 */
export {
  COMPILER_VERSION,
  type CompileOptions,
  compileEngine,
  compileVaeEncoder,
  PlanRequiredError,
} from './compile.ts';
export { type Measurements, measureLayers, type PlannerInput, planModes } from './planner/plan.ts';
