/**
 * The committed schema (`schema/schema.graphql`) and typed operations (`test/helpers/gql/`) must match what
 * `codegen.ts` produces from the code-first schema: run `npx tsx codegen.ts` after changing the schema.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCodegen } from '../../codegen.ts';

describe('codegen output', () => {
  it('is up to date (run `npx tsx codegen.ts` when this fails)', async () => {
    const files = await runCodegen(false);
    expect(files.map((f) => f.filename)).toEqual(
      expect.arrayContaining(['schema/schema.graphql', 'test/helpers/gql/graphql.ts']),
    );
    for (const f of files) {
      const committed = await readFile(resolve(f.filename), 'utf8');
      expect(committed, `${f.filename} is stale`).toBe(f.content);
    }
  });

  it('exposes the operations the API promises', async () => {
    const sdl = await readFile(resolve('schema/schema.graphql'), 'utf8');
    for (const field of ['models:', 'generateImage(', 'job(', 'jobs(', 'cancelJob(', 'jobProgress(']) {
      expect(sdl).toContain(field);
    }
  });
});
