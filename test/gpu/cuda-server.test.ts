/**
 * The native CUDA engine behind the real server (`fluxql serve --engine cuda`), on a GPU machine: the checks of
 * `cuda-checks.ts` and `cuda-lora-edit-checks.ts` under vitest. Without the built engine or a GPU (CI) every test is
 * skipped and a SKIP line says why. On the GPU machine, whose node_modules travels without vitest, `run-node.ts` runs
 * the same checks.
 */
import { afterAll, beforeAll, describe, it } from 'vitest';
import { cudaSuites, SKIP } from './cuda-checks.ts';
import { loraEditSuites } from './cuda-lora-edit-checks.ts';

if (SKIP) console.log(`SKIP test/gpu/cuda-server.test.ts: ${SKIP}`);

for (const suite of [...cudaSuites(), ...loraEditSuites()]) {
  describe.skipIf(SKIP !== undefined)(SKIP ? `${suite.name} [skipped: ${SKIP}]` : suite.name, () => {
    if (suite.before) beforeAll(suite.before, 300_000);
    if (suite.after) afterAll(suite.after, 60_000);
    for (const t of suite.tests) it(t.name, t.fn, 300_000);
  });
}
