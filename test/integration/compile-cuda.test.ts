/**
 * `fluxql compile --engine cuda` plans the CUDA engine's modes ahead of serving: real processes on the fake engine
 * (test/helpers/fake-cuda-engine.mjs, which calibrates), with ONNX Runtime blocked as on a GPU machine. The manifest
 * it stores is the one `fluxql serve --engine cuda` reads on the same cache: the server sends no `calibrate` and its
 * `models` query reports the plans compile printed. A mode the engine cannot serve (L on f32) fails with the reason.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import type { CudaCompiledMode } from '../../src/pipeline/cuda-compile.ts';
import { FAKE_CUDA_ENGINE, readFakeEngineLog } from '../helpers/fake-cuda-engine-log.ts';
import { REPO_ROOT } from '../helpers/paths.ts';
import { type ServeProcess, startServe } from '../helpers/serve-process.ts';

const run = promisify(execFile);
const BLOCK = resolve(REPO_ROOT, 'test/fixtures/no-ort/block-ort.cjs');
const CLI = resolve(REPO_ROOT, 'bin/fluxql.js');
const MODEL = resolve(REPO_ROOT, 'models/flux-tiny');
let server: ServeProcess | undefined;
const dirs: string[] = [];

afterAll(async () => {
  await server?.stop();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'fluxql-compile-cuda-'));
  dirs.push(d);
  return d;
}

/** `node --require block-ort bin/fluxql.js compile --engine cuda ...`: exit code and output, success or not. */
async function compile(args: string[], env: Record<string, string>) {
  try {
    const { stdout, stderr } = await run(
      process.execPath,
      ['--require', BLOCK, CLI, 'compile', '--engine', 'cuda', '--model', MODEL, ...args],
      { cwd: REPO_ROOT, env: { ...process.env, CUDA_ENGINE_BIN: FAKE_CUDA_ENGINE, ...env }, timeout: 60_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout: string; stderr: string };
    return { code: e.code ?? -1, stdout: e.stdout, stderr: e.stderr };
  }
}

/** One JSON line of the command: a planned mode and the cache it went to. */
type Line = CudaCompiledMode & { cacheDir: string };
const linesOf = (stdout: string) =>
  stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Line);

describe('fluxql compile --engine cuda', () => {
  it('plans L, M and S into CACHE_DIR; serve on that cache loads them without calibrating', {
    timeout: 120_000,
  }, async () => {
    const dir = await tempDir();
    const compileLog = join(dir, 'compile-engine.jsonl');
    const first = await compile([], { CACHE_DIR: dir, FAKE_ENGINE_LOG: compileLog });
    expect(first.code, first.stderr).toBe(0);
    expect(`${first.stdout}${first.stderr}`).not.toContain('onnxruntime-node is blocked');
    const lines = linesOf(first.stdout);
    // No --mode: the planned modes. The fake engine's images do not move with caching: 0.8 is the first candidate
    // that caches every step the rule allows, 2 in a row (as serve-cuda-no-ort.test.ts reports it).
    expect(lines.map((l) => [l.mode, l.stepCacheThreshold, l.stepCacheMaxConsecutive, l.calibrated])).toEqual([
      ['L', 0.8, 2, true],
      ['M', 0.8, 2, true],
      ['S', 0.8, 2, true],
    ]);
    const manifest = lines[0]!.manifest!;
    expect(manifest.startsWith(join(dir, 'cuda-plans'))).toBe(true);
    expect(existsSync(manifest)).toBe(true);
    const stored = JSON.parse(readFileSync(manifest, 'utf8')) as {
      format: string;
      served: Record<string, { plan: string }>;
    };
    expect(stored.format).toBe('fluxql-cuda-plans');
    for (const l of lines) {
      expect(l.manifest).toBe(manifest);
      expect(l.cacheDir).toBe(dir);
      expect(l.plan).toBe(stored.served[l.mode]!.plan);
      expect(l.fp8Layers).toBeGreaterThan(0);
      expect(l.seconds).toBeGreaterThan(0);
    }
    // Budgets nest (L 1 %, M 1.5 %, S 2 %): more error allowed, at least as many fp8 layers.
    expect(lines[0]!.fp8Layers!).toBeLessThanOrEqual(lines[1]!.fp8Layers!);
    expect(lines[1]!.fp8Layers!).toBeLessThanOrEqual(lines[2]!.fp8Layers!);
    // The planner really calibrated on the engine this time.
    expect(readFakeEngineLog(compileLog).some((f) => f.header.op === 'calibrate')).toBe(true);

    // Again on the same cache: found, not calibrated; original has no plan and no manifest.
    const again = await compile(['--mode', 'original', 'S'], { CACHE_DIR: dir });
    expect(again.code, again.stderr).toBe(0);
    expect(linesOf(again.stdout).map((l) => [l.mode, l.plan, l.fp8Layers, l.manifest, l.calibrated])).toEqual([
      ['original', null, 0, null, null],
      ['S', lines[2]!.plan, lines[2]!.fp8Layers, manifest, false],
    ]);

    // The server on the same cache reads the manifest: no calibrate frame, and `models` reports those plans.
    const serveLog = join(dir, 'serve-engine.jsonl');
    server = await startServe({
      nodeArgs: ['--require', BLOCK],
      args: ['--engine', 'cuda'],
      env: {
        MODEL_REPO: MODEL,
        CUDA_ENGINE_BIN: FAKE_CUDA_ENGINE,
        IMAGE_DIR: dir,
        CACHE_DIR: dir,
        FAKE_ENGINE_LOG: serveLog,
      },
    });
    expect(server.output()).toContain(`cuda planner: using stored plans ${manifest}`);
    const ops = readFakeEngineLog(serveLog).map((f) => f.header.op);
    expect(ops).toContain('load');
    expect(ops).not.toContain('calibrate');
    const res = await fetch(`${server.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        query:
          '{ models { mode plan { source algorithms { algorithm layers } stepCache { threshold maxConsecutive } } } }',
      }),
    });
    type Model = {
      mode: string;
      plan: {
        source: string;
        algorithms: { algorithm: string; layers: number }[];
        stepCache: { threshold: number; maxConsecutive: number } | null;
      } | null;
    };
    const models = ((await res.json()) as { data: { models: Model[] } }).data.models;
    for (const l of lines) {
      const m = models.find((x) => x.mode === l.mode);
      expect(m?.plan?.source).toContain(manifest);
      expect(m?.plan?.algorithms.find((a) => a.algorithm === 'fp8')?.layers).toBe(l.fp8Layers);
      expect(m?.plan?.stepCache?.threshold).toBe(l.stepCacheThreshold);
      expect(m?.plan?.stepCache?.maxConsecutive).toBe(l.stepCacheMaxConsecutive);
    }
  });

  it('refuses a mode the engine cannot serve (L on f32) with the reason, no stack trace', {
    timeout: 60_000,
  }, async () => {
    const dir = await tempDir();
    const r = await compile(['--mode', 'original', 'L'], { CACHE_DIR: dir, CUDA_PRECISION: 'f32' });
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n').at(-1)).toBe(
      'fluxql: mode L cannot be served by this CUDA engine: an f32 engine has no fp8 path (fp8 plans need the bf16 base precision)',
    );
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(join(dir, 'cuda-plans'))).toBe(false);
  });

  it("fails with the planner's reason when calibration fails, and stores nothing", { timeout: 60_000 }, async () => {
    const dir = await tempDir();
    const r = await compile([], { CACHE_DIR: dir, FAKE_ENGINE_CALIBRATE_FAIL: '1' });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^fluxql: the per-layer planner failed: /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(join(dir, 'cuda-plans'))).toBe(false);
  });
});
