/**
 * @file Temporary folders for the weights tests: each test file gets its own under os.tmpdir(), removed afterwards.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';

/** Creates a fresh folder for this test file and registers its removal after all tests. */
export function useTempDir(prefix: string): () => string {
  const root = mkdtempSync(join(tmpdir(), `fluxql-${prefix}-`));
  let n = 0;
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  // Each call returns a new empty subfolder, so tests do not see each other's files.
  return () => mkdtempSync(join(root, `${n++}-`));
}
