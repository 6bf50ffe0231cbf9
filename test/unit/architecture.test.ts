/**
 * Layer boundaries (ARCHITECTURE.md): onnxruntime-node only under src/runtime/, GraphQL libraries only under
 * src/api/, and data flowing one way: api → service → pipeline → runtime.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/paths.ts';

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : /\.(ts|mjs)$/.test(n) ? [p] : [];
  });
}

const SRC = join(REPO_ROOT, 'src');
const imports = files(SRC).map((f) => ({
  file: relative(SRC, f),
  specs: [...readFileSync(f, 'utf8').matchAll(/(?:from\s+|import\s*\(\s*)['"]([^'"]+)['"]/g)].map((m) => m[1]!),
}));
const layerOf = (file: string) => file.split('/')[0]!;

describe('architecture', () => {
  it('imports onnxruntime-node only in src/runtime', () => {
    const bad = imports.filter(
      (i) => layerOf(i.file) !== 'runtime' && i.specs.some((s) => s.startsWith('onnxruntime')),
    );
    expect(bad.map((b) => b.file)).toEqual([]);
  });

  it('imports GraphQL libraries only in src/api', () => {
    const gql = /^(graphql|graphql-yoga|graphql-ws|@pothos\/|@graphql-yoga\/|dataloader)/;
    const bad = imports.filter((i) => layerOf(i.file) !== 'api' && i.specs.some((s) => gql.test(s)));
    expect(bad.map((b) => b.file)).toEqual([]);
  });

  it('reads the environment only in src/config.ts (everything else is passed the settings)', () => {
    const bad = files(SRC)
      .filter((f) => relative(SRC, f) !== 'config.ts')
      .filter((f) => /process\.env(\.[A-Za-z_]|\[)/.test(readFileSync(f, 'utf8')))
      .map((f) => relative(SRC, f));
    expect(bad).toEqual([]);
  });

  it('never imports an upper layer from a lower one', () => {
    const rank: Record<string, number> = { api: 3, service: 2, pipeline: 1, runtime: 0, shared: -1 };
    const bad: string[] = [];
    for (const i of imports) {
      const own = rank[layerOf(i.file)];
      if (own === undefined) continue; // cli/, main.ts, config.ts: composition roots
      for (const s of i.specs.filter((s) => s.startsWith('.'))) {
        const target = relative(SRC, join(SRC, i.file, '..', s)).split('/')[0]!;
        const r = rank[target];
        if (r !== undefined && r > own) bad.push(`${i.file} → ${s}`);
      }
    }
    expect(bad).toEqual([]);
  });
});
