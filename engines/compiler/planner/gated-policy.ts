/**
 * @file The calibration graph's Linear policy: every layer computes its float32 output and the output of each
 * compression algorithm, blended by a graph input,
 *
 *   y = y_fp32 + Σₐ gate[a, i] · (yₐ − y_fp32)          gate `[nAlgorithms · nLayers]`, float32
 *
 * so one compiled graph measures any plan: a one-hot gate (one layer, one algorithm) gives the error that choice
 * causes alone, a multi-hot gate the error of a whole plan, with exactly the kernels the compiled engine runs. This is
 * how the planner measures hundreds of (layer, algorithm) pairs without compiling hundreds of graphs.
 */

import { type LinearPolicy, plainLinear } from '../flux/linear-policy.ts';
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { type Algorithm, algorithmPolicy } from './algorithms.ts';

/** Name of the gate input of a calibration graph. */
export const GATE_INPUT = 'plan_gate';

/** The layers a gated graph saw, filled while the graph is built. */
export interface GateLayout {
  /** Algorithms along the gate's first axis. */
  readonly algorithms: readonly Algorithm[];
  /** Layer names in gate order (graph order). */
  readonly layers: string[];
  /** Output features and rows of each layer (for the latency model), in gate order. */
  readonly shapes: { inFeatures: number; outFeatures: number }[];
}

/**
 * A policy emitting the blend above; declares the gate input on first use. The gate length is only known once the
 * graph is built, so the input is declared with a symbolic dim and {@link GateLayout.layers} says how long it is.
 */
export function gatedPolicy(
  algorithms: readonly Algorithm[],
  base: LinearPolicy = plainLinear,
): { policy: LinearPolicy; layout: GateLayout } {
  const layout: GateLayout = { algorithms, layers: [], shapes: [] };
  let declared = false;
  const policy: LinearPolicy = (b: GraphBuilder, x, layer) => {
    if (!declared) {
      b.input(GATE_INPUT, 'float32', ['G']);
      declared = true;
    }
    const i = layout.layers.length;
    layout.layers.push(layer.name);
    layout.shapes.push({ inFeatures: layer.weights.inFeatures, outFeatures: layer.weights.outFeatures });
    const yRef = base(b, x, layer);
    let y = yRef;
    algorithms.forEach((alg, a) => {
      const ya = algorithmPolicy(alg, base)(b, x, layer);
      // gate[a, i] as a scalar (index a·L + i is only known at the end, so rows are laid out per layer: i·A + a).
      const g = b.op('Gather', [GATE_INPUT, b.constI64([i * algorithms.length + a])], { axis: 0 }); // [1]
      y = b.op('Add', [y, b.op('Mul', [g, b.op('Sub', [ya, yRef])])]);
    });
    return y;
  };
  return { policy, layout };
}

/** Gate index of (layer `i`, algorithm `a`): rows are per layer, see {@link gatedPolicy}. */
export function gateIndex(layout: GateLayout, layer: number, algorithm: Algorithm): number {
  const a = layout.algorithms.indexOf(algorithm);
  if (a < 0) throw new Error(`gate: algorithm ${algorithm} is not in this calibration graph`);
  return layer * layout.algorithms.length + a;
}

/** The gate vector of a plan (`choices[layer] = algorithm`, absent or `fp32` = off). */
export function gateFor(layout: GateLayout, choices: Readonly<Record<string, string>>): Float32Array {
  const g = new Float32Array(layout.layers.length * layout.algorithms.length);
  layout.layers.forEach((name, i) => {
    const alg = choices[name];
    if (alg && alg !== 'fp32') g[gateIndex(layout, i, alg as Algorithm)] = 1;
  });
  return g;
}
