/**
 * @file The elastic modes a model can be compiled in, and what each changes in the build. `original` is exactly the
 * diffusers computation; `XL` is the mathematically equivalent optimised graph (fused projections: fewer, larger
 * GEMMs). The compressed modes (L, M, S) come from the per-layer planner.
 */

/** Build options of one mode. */
export interface ModeSpec {
  name: string;
  description: string;
  /** Options passed to the transformer graph builder. */
  transformer: { fuseProjections: boolean };
}

const MODES: Readonly<Record<string, ModeSpec>> = Object.freeze({
  original: {
    name: 'original',
    description: 'Reference graph: exactly the diffusers computation in float32.',
    transformer: { fuseProjections: false },
  },
  XL: {
    name: 'XL',
    description: 'Mathematically equivalent, optimised: fused QKV / single-block projections.',
    transformer: { fuseProjections: true },
  },
});

/** Names of the modes this compiler can build. */
export const MODE_NAMES: readonly string[] = Object.freeze(Object.keys(MODES));

/** A mode name that is not known. */
export class UnknownModeError extends Error {
  readonly param = 'mode';
  constructor(readonly mode: string) {
    super(`unknown mode "${mode}"; available modes: ${MODE_NAMES.join(', ')}`);
    this.name = 'UnknownModeError';
  }
}

/** The spec of `name` (case-sensitive, as the API spells modes). */
export function resolveMode(name: string): ModeSpec {
  const m = MODES[name];
  if (!m) throw new UnknownModeError(name);
  return m;
}
