/**
 * @file The engine compiler as the pipeline sees it: a port, not an import. `engines/compiler` is a build-time tool
 * that imports this repository's shared vocabulary; the pipeline must not import it back, so the composition roots
 * (`bin/fluxql.js` for the CLI, `engine-process/entry.ts` for the server's engine process, benches and tests) pass
 * `engineCompiler` of `engines/compiler/port.ts` in as {@link FluxPipelineOptions.compiler}.
 */
import type { HostTensor } from '../../runtime/index.ts';
import type { ModePlan, ModeSpec } from '../../shared/vocabulary/index.ts';
import type { ComponentWeights, ModelRepo } from '../../shared/weights/index.ts';

/** What one engine build asks for (the compiler's cache key is derived from it and the weights). */
export interface EngineCompileRequest {
  mode: string;
  cacheDir: string;
  onLog?: (message: string) => void;
  /** The mode's LoRA-enabled variant. */
  lora?: boolean;
  /** With `lora`: extra transformer input channels of a control-capable engine (64 for BFL Control LoRAs). */
  controlChannels?: number;
  /** The per-layer plan; required by the planned modes (L, M, S). */
  plan?: ModePlan;
}

/** What planning the compressed modes needs: the transformer's weights and real inputs of its XL graph. */
export interface PlanRequest {
  transformer: ComponentWeights;
  /** The graph the plans apply to (the XL switches). */
  graph: ModeSpec['transformer'];
  /** Calibration batch of the transformer graph. */
  feeds: Record<string, HostTensor>;
  /** Token counts (per sample) layers are priced at. */
  timing: { image: number; text: number };
  /** Error budget of every planned mode, by mode name. */
  budgets: Readonly<Record<string, number>>;
  threads?: number;
  onLog?: (message: string) => void;
}

/** See the file header. */
export interface EngineCompilerPort {
  /** Changes whenever compiled output changes (part of the plan cache's key). */
  readonly version: string;
  /** Compiles (or finds in the cache) the engine of a mode; returns its manifest path. */
  compileEngine(repo: ModelRepo, request: EngineCompileRequest): string;
  /** The VAE encoder alone (img2img, inpainting), compiled unless cached; returns its ONNX file. */
  compileVaeEncoder(repo: ModelRepo, options: { cacheDir: string; onLog?: (message: string) => void }): string;
  /**
   * Measures every layer once and plans every budget from the measurements. `measurements` is the compiler's own
   * record, kept in the plan cache beside the plans.
   */
  planModes(request: PlanRequest): Promise<{ measurements: unknown; plans: Record<string, ModePlan> }>;
}
