/**
 * @file flux-tiny's transformer config, free of any test runner: the GPU checks (test/gpu/, run under node:test on
 * the GPU machine, whose carried node_modules has no vitest) import it from here.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FluxTransformerConfig } from '../../src/shared/vocabulary/transformer-config.ts';
import { MODEL_DIR } from './paths.ts';

/** flux-tiny's transformer config: hidden 32 (2 heads × 16), 2 double + 3 single blocks, in_channels 64. */
export const TINY_CONFIG = JSON.parse(
  readFileSync(join(MODEL_DIR, 'transformer', 'config.json'), 'utf8'),
) as FluxTransformerConfig;
