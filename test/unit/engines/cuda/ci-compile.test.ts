/**
 * The native CUDA engine cannot run without a GPU, but its kernels can be compiled: CI builds every source that
 * needs only the CUDA runtime headers (engines/cuda/scripts/ci-compile.sh), or the script prints a skip line when
 * nvcc is absent. The GPU tests themselves run on the GPU machine (engines/cuda/scripts/device-run.sh).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../../helpers/paths.ts';

const run = promisify(execFile);

describe('engines/cuda on a machine without a GPU', () => {
  it('compiles the kernel sources for sm_90a, or says clearly why not', { timeout: 900_000 }, async () => {
    const { stdout } = await run('bash', [join(REPO_ROOT, 'engines/cuda/scripts/ci-compile.sh')], {
      maxBuffer: 1 << 24,
    });
    process.stdout.write(stdout);
    expect(stdout).toMatch(
      /engines\/cuda ci-compile: \d+ sources compiled|SKIP engines\/cuda ci-compile: nvcc not found/,
    );
    expect(stdout).toMatch(/SKIP engines\/cuda GPU tests/);
  });
});
