/**
 * @file Reading transformer weights with their shapes checked against the config (the compiler's side of
 * `src/shared/vocabulary/transformer-config.ts`).
 */
import { TransformerCompileError } from '../../../src/shared/vocabulary/transformer-config.ts';
import type { LinearWeights, WeightReader } from '../onnx/nn.ts';

function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * Reads a float32 tensor after checking it exists with exactly `shape`.
 * @throws TransformerCompileError naming the tensor when it is missing or its shape differs.
 */
export function readChecked(w: WeightReader, name: string, shape: readonly number[]): Float32Array {
  if (!w.has(name)) throw new TransformerCompileError(name, `missing from the transformer weights`);
  const actual = w.info(name).shape;
  if (actual.length !== shape.length || actual.some((d, i) => d !== shape[i])) {
    throw new TransformerCompileError(
      name,
      `shape ${shapeStr(actual)} does not match the config, expected ${shapeStr(shape)}`,
    );
  }
  return w.readF32(name);
}

/**
 * Reads the Linear `<module>.weight` `[outFeatures, inFeatures]` and its optional `<module>.bias` `[outFeatures]`.
 * @throws TransformerCompileError naming the tensor when the weight is missing or either shape differs.
 */
export function readLinearChecked(
  w: WeightReader,
  module: string,
  outFeatures: number,
  inFeatures: number,
): LinearWeights {
  const weight = readChecked(w, `${module}.weight`, [outFeatures, inFeatures]);
  const bias = w.has(`${module}.bias`) ? readChecked(w, `${module}.bias`, [outFeatures]) : undefined;
  return { weight, outFeatures, inFeatures, bias };
}
