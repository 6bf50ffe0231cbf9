/**
 * @file The checks of `cuda-checks.ts` and `cuda-lora-edit-checks.ts` under `node:test`, for the GPU machine (its
 * carried node_modules has no vitest): `node --import tsx --test-reporter=spec test/gpu/run-node.ts`. Exits non-zero
 * when a check fails.
 */
import { after, before, describe, it } from 'node:test';
import { cudaSuites, SKIP } from './cuda-checks.ts';
import { loraEditSuites } from './cuda-lora-edit-checks.ts';

if (SKIP) console.log(`SKIP test/gpu/run-node.ts: ${SKIP}`);

for (const suite of [...cudaSuites(), ...loraEditSuites()]) {
  describe(suite.name, { skip: SKIP }, () => {
    if (suite.before) before(suite.before);
    if (suite.after) after(suite.after);
    for (const t of suite.tests) it(t.name, t.fn);
  });
}
