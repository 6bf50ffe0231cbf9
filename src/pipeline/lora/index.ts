/**
 * @file Public surface of the LoRA layer: parsing and validating LoRA files of four formats, LORA_DIR confinement,
 * the set manager that produces engine feeds. `FluxPipeline.loras` is the manager of a loaded pipeline.
 */

export { MAX_RANK as MAX_LORA_RANK } from './collect.ts';
export { createLoraManager, readLoraLayout } from './engine-layout.ts';
export { LoraError, type LoraErrorCode, type LoraErrorData } from './errors.ts';
export { type LoraFile, listLoraFiles, resolveLoraFile } from './lora-dir.ts';
export { LoraManager, type LoraManagerOptions, type LoraScan } from './lora-manager.ts';
export { type LoraModelSpec, loraModelSpec } from './model-layers.ts';
export { detectLoraFormat, parseLoraFile, parseLoraTensors } from './parse.ts';
export {
  LORA_EXTENSION,
  loraFileName,
  loraSetKey,
  loraStrengthProblem,
  MAX_LORA_STRENGTH,
  sortedLoraSet,
} from './selection.ts';
export {
  describeLora,
  LORA_FORMATS,
  type LoraFactor,
  type LoraFormat,
  type LoraInfo,
  type LoraSelection,
  type ParsedLora,
} from './types.ts';
