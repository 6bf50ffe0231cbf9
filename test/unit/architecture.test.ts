/**
 * Import rules of the whole repository (`src/`, `engines/`, `bench/`, `tools/`, `test/`):
 * - src/ layers (docs/ARCHITECTURE.md): onnxruntime-node only under src/runtime/, GraphQL libraries only under src/api/,
 *   data flowing one way (api → service → pipeline → runtime), the environment read only in src/config.ts.
 * - `engines/compiler` is a build-time tool: src/ does not import it. The pipeline sees it as a port
 *   (src/pipeline/flux/compiler-port.ts) that composition roots fill with `engines/compiler/port.ts`; those roots are
 *   outside src/ (bin/fluxql.js, benches, tests) except one (`ENGINE_ENTRY`, see there). Everything else the two share
 *   is the vocabulary in src/shared/vocabulary/ and the manifests. The compiler reaches back only into src/shared/ and
 *   the runtime's public API (src/runtime/index.ts).
 * - Nothing outside test/ imports test/; src/ imports nothing outside src/ but that one composition root's import.
 * Each rule is a function over the import graph, checked against the real tree and against a graph that breaks it.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/paths.ts';

/** One file's import specifiers (static, side-effect and dynamic), relative ones resolved to repository paths. */
interface FileImports {
  file: string;
  specs: { spec: string; target?: string }[];
}

function files(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    if (n === 'node_modules' || n === 'build' || n === 'gql') return [];
    return statSync(p).isDirectory() ? files(p) : /\.(ts|mts|mjs|js)$/.test(n) ? [p] : [];
  });
}

const IMPORT = /(?:\bfrom\s+|\bimport\s*\(\s*|^\s*import\s+)['"]([^'"]+)['"]/gm;

function readImports(path: string): FileImports {
  const file = relative(REPO_ROOT, path);
  const specs = [...readFileSync(path, 'utf8').matchAll(IMPORT)].map((m) => {
    const spec = m[1]!;
    return spec.startsWith('.') ? { spec, target: relative(REPO_ROOT, join(dirname(path), spec)) } : { spec };
  });
  return { file, specs };
}

const ROOTS = ['src', 'engines', 'bench', 'tools', 'test', 'bin', 'web/src'];
const graph: FileImports[] = ROOTS.flatMap((r) => files(join(REPO_ROOT, r))).map(readImports);

const under = (path: string, dir: string) => path === dir || path.startsWith(`${dir}/`);
const edges = (g: FileImports[]) => g.flatMap((f) => f.specs.map((s) => ({ file: f.file, ...s })));
const show = (e: { file: string; spec: string }) => `${e.file} → ${e.spec}`;

/**
 * The one src/ file allowed to import the compiler, and only its port object: the entry module of the ONNX engine
 * child process. The child is started from that file (it has no caller to be handed the compiler by), and the
 * pipeline it hosts compiles and plans the modes the server warms up. Every other composition root is outside src/.
 */
const ENGINE_ENTRY = 'src/pipeline/engine-process/entry.ts';
const COMPILER_PORT = 'engines/compiler/port.ts';
const isEngineEntryEdge = (e: { file: string; target?: string }) =>
  e.file === ENGINE_ENTRY && e.target === COMPILER_PORT;

/** src/ ↔ engines/compiler only through the port's one wiring, the vocabulary and the manifests. */
function compilerBoundary(g: FileImports[]): string[] {
  return edges(g)
    .filter((e) => e.target)
    .filter((e) => {
      if (under(e.file, 'src') && under(e.target!, 'engines')) return !isEngineEntryEdge(e);
      if (under(e.file, 'engines/compiler') && under(e.target!, 'src')) {
        return !(under(e.target!, 'src/shared') || e.target === 'src/runtime/index.ts');
      }
      return false;
    })
    .map(show);
}

/** test/ is imported only by test/ (its helpers are no library: shared helpers live in tools/). */
function testImports(g: FileImports[]): string[] {
  return edges(g)
    .filter((e) => e.target && !under(e.file, 'test') && under(e.target, 'test'))
    .map(show);
}

/** src/ imports nothing else of the repository but the engine entry's compiler port. */
function srcSelfContained(g: FileImports[]): string[] {
  return edges(g)
    .filter((e) => e.target && under(e.file, 'src') && !under(e.target, 'src') && !isEngineEntryEdge(e))
    .map(show);
}

const layerOf = (file: string) => file.split('/')[1]!; // src/<layer>/...

function layerOrder(g: FileImports[]): string[] {
  const rank: Record<string, number> = { api: 3, service: 2, pipeline: 1, runtime: 0, shared: -1 };
  return edges(g)
    .filter((e) => e.target && under(e.file, 'src') && under(e.target, 'src'))
    .filter((e) => {
      const own = rank[layerOf(e.file)];
      const r = rank[layerOf(e.target!)];
      // cli/, main.ts, config.ts: composition roots
      return own !== undefined && r !== undefined && r > own;
    })
    .map(show);
}

describe('architecture', () => {
  it('imports onnxruntime-node only in src/runtime', () => {
    const bad = edges(graph).filter(
      (e) => e.spec.startsWith('onnxruntime') && !under(e.file, 'src/runtime') && !under(e.file, 'test'),
    );
    expect(bad.map(show)).toEqual([]);
  });

  it('imports GraphQL libraries only in src/api', () => {
    const gql = /^(graphql|graphql-yoga|graphql-ws|@pothos\/|@graphql-yoga\/|dataloader)/;
    const bad = edges(graph).filter((e) => under(e.file, 'src') && !under(e.file, 'src/api') && gql.test(e.spec));
    expect(bad.map(show)).toEqual([]);
  });

  it('reads the environment only in src/config.ts (everything else is passed the settings)', () => {
    const bad = graph
      .filter((f) => under(f.file, 'src') && f.file !== 'src/config.ts')
      .filter((f) => /process\.env(\.[A-Za-z_]|\[)/.test(readFileSync(join(REPO_ROOT, f.file), 'utf8')))
      .map((f) => f.file);
    expect(bad).toEqual([]);
  });

  it('never imports an upper layer from a lower one', () => {
    expect(layerOrder(graph)).toEqual([]);
    expect(
      layerOrder([{ file: 'src/runtime/x.ts', specs: [{ spec: '../service/y.ts', target: 'src/service/y.ts' }] }]),
    ).toHaveLength(1);
  });

  it('reaches engines/compiler from src/ only through the port, the vocabulary and the manifests', () => {
    expect(compilerBoundary(graph)).toEqual([]);
    // What the rule catches: a deep import either way, the compiler's API from the pipeline (as engine-cache.ts and
    // elastic-plan.ts once did), and the port from anywhere in src/ but the engine entry.
    const broken: FileImports[] = [
      { file: 'src/pipeline/lora/feeds.ts', specs: [{ spec: 'x', target: 'engines/compiler/flux/lora-policy.ts' }] },
      { file: 'src/pipeline/flux/engine-cache.ts', specs: [{ spec: 'x', target: 'engines/compiler/index.ts' }] },
      { file: 'src/service/models.ts', specs: [{ spec: 'x', target: COMPILER_PORT }] },
      { file: 'src/cli/main.ts', specs: [{ spec: 'x', target: COMPILER_PORT }] },
      { file: 'engines/compiler/compile.ts', specs: [{ spec: 'x', target: 'src/pipeline/flux/pipeline.ts' }] },
      { file: 'engines/compiler/planner/measure.ts', specs: [{ spec: 'x', target: 'src/runtime/session.ts' }] },
    ];
    expect(compilerBoundary(broken)).toHaveLength(6);
    expect(srcSelfContained(broken.filter((f) => under(f.file, 'src')))).toHaveLength(4);
    const allowed: FileImports[] = [
      { file: ENGINE_ENTRY, specs: [{ spec: 'x', target: COMPILER_PORT }] },
      { file: 'engines/compiler/compile.ts', specs: [{ spec: 'x', target: 'src/shared/vocabulary/modes.ts' }] },
      { file: 'engines/compiler/planner/measure.ts', specs: [{ spec: 'x', target: 'src/runtime/index.ts' }] },
    ];
    expect(compilerBoundary(allowed)).toEqual([]);
  });

  it('imports test/ only from tests, and nothing outside src/ from src/', () => {
    expect(testImports(graph)).toEqual([]);
    expect(srcSelfContained(graph)).toEqual([]);
    const broken: FileImports[] = [
      { file: 'bench/scale-out.ts', specs: [{ spec: 'x', target: 'test/helpers/cluster.ts' }] },
      { file: 'engines/cuda/scripts/prepare-fixtures.ts', specs: [{ spec: 'x', target: 'test/helpers/paths.ts' }] },
    ];
    expect(testImports(broken)).toHaveLength(2);
    expect(
      srcSelfContained([{ file: 'src/main.ts', specs: [{ spec: 'x', target: 'tools/cluster.ts' }] }]),
    ).toHaveLength(1);
  });

  it('sees every kind of import (the rules are only as good as this parse)', () => {
    const parsed = [
      ...`import { a } from './a.ts';\nimport type { B } from "../b.ts";\nimport './side.ts';\nconst m = await import('./lazy.ts');\n} from '../multi.ts';`.matchAll(
        IMPORT,
      ),
    ].map((m) => m[1]);
    expect(parsed).toEqual(['./a.ts', '../b.ts', './side.ts', './lazy.ts', '../multi.ts']);
    expect(
      graph.some((f) => f.file === 'src/main.ts' && f.specs.some((s) => s.target === 'src/pipeline/index.ts')),
    ).toBe(true); // main.ts's dynamic import of the pipeline
  });
});
