/**
 * @file `engineCompiler`: this compiler behind the pipeline's port (`src/pipeline/flux/compiler-port.ts`). `src/`
 * never imports the compiler; the composition roots (`bin/fluxql.js`, the engine process's entry, benches, tests)
 * import this object and hand it to the pipeline. Typed structurally: the compiler reaches back only into
 * `src/shared/` and the runtime's public API, so the port's interface is checked where the roots pass this in.
 */
import type { FluxTransformerConfig } from '../../src/shared/vocabulary/transformer-config.ts';
// compile.ts only: the planner's measurements run ONNX Runtime (planner/measure.ts imports the runtime), so the
// planner is imported when a plan is asked for. A process that never plans (`fluxql serve --engine cuda`, whose
// GPU machines get no onnxruntime-node native library) then never loads ONNX Runtime.
import { COMPILER_VERSION, compileEngine, compileVaeEncoder } from './compile.ts';
import type { PlannerInput } from './planner/plan.ts';

type PlanRequest = Omit<PlannerInput, 'weights' | 'config'> & {
  transformer: { config: unknown; open(): PlannerInput['weights'] & { close(): void } };
  budgets: Readonly<Record<string, number>>;
};

/** See the file header. */
export const engineCompiler = {
  version: COMPILER_VERSION,
  compileEngine,
  compileVaeEncoder,
  /** Measures every layer of the transformer once, then plans each budget from the measurements. */
  async planModes({ transformer, budgets, ...rest }: PlanRequest) {
    const { measureLayers, planModes } = await import('./planner/plan.ts');
    const weights = transformer.open();
    try {
      const input: PlannerInput = { ...rest, weights, config: transformer.config as FluxTransformerConfig };
      const measurements = await measureLayers(input);
      return { measurements, plans: await planModes(input, measurements, budgets) };
    } finally {
      weights.close();
    }
  },
};
