/**
 * `fluxql serve --engine cuda` starts and serves without ONNX Runtime: the GPU machines get a Node bundle without
 * its 45 MB native library (engines/cuda/scripts/pack-node.sh), and a CUDA deployment never runs an ONNX session.
 * A real server process on the fake engine (test/helpers/fake-cuda-engine.mjs), with a preload that makes loading
 * onnxruntime-node throw; the same preload stops `fluxql generate` (ONNX) with that error, so the block is real.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FAKE_CUDA_ENGINE } from '../helpers/fake-cuda-engine-log.ts';
import { REPO_ROOT } from '../helpers/paths.ts';
import { type ServeProcess, startServe } from '../helpers/serve-process.ts';

const BLOCK = resolve(REPO_ROOT, 'test/fixtures/no-ort/block-ort.cjs');
const CLI = resolve(REPO_ROOT, 'bin/fluxql.js');
let server: ServeProcess | undefined;
let dir: string | undefined;

afterAll(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('serve --engine cuda without onnxruntime-node', () => {
  it('starts, answers GraphQL and reports the engine', { timeout: 60_000 }, async () => {
    dir = await mkdtemp(join(tmpdir(), 'fluxql-no-ort-'));
    server = await startServe({
      nodeArgs: ['--require', BLOCK],
      args: ['--engine', 'cuda'],
      env: {
        MODEL_REPO: resolve(REPO_ROOT, 'models/flux-tiny'),
        CUDA_ENGINE_BIN: FAKE_CUDA_ENGINE,
        IMAGE_DIR: dir,
        // The CUDA planner's manifest (the fake engine calibrates): not the repository's cache.
        CACHE_DIR: dir,
      },
      whileStarting: (out) => expect(out).not.toContain('onnxruntime-node is blocked'),
    });
    const url = server.url;
    const res = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        query: '{ models { id device plan { stepCache { threshold maxConsecutive psnr minPsnr } } } }',
      }),
    });
    type Model = { id: string; device: string; plan: { stepCache: Record<string, number> | null } | null };
    const body = (await res.json()) as { data?: { models: Model[] } };
    expect(body.data?.models[0]?.device).toContain('fake');
    // bf16 with a cache folder: the planner ran on the fake engine's calibration and L and M are served.
    expect(body.data?.models.map((m) => m.id)).toEqual([
      'flux-1-dev-original-bs4',
      'flux-1-dev-xl-bs4',
      'flux-1-dev-l-bs4',
      'flux-1-dev-m-bs4',
      'flux-1-dev-s-bs4',
    ]);
    // Each planned mode's calibrated step caching (the fake's images do not move with caching: 0.8, the first
    // candidate caching every step the rule allows, and 2 in a row, which caches more) and its floor; original and XL
    // are not planned.
    expect(body.data?.models.map((m) => m.plan?.stepCache ?? null)).toEqual([
      null,
      null,
      { threshold: 0.8, maxConsecutive: 2, psnr: 100, minPsnr: 38 },
      { threshold: 0.8, maxConsecutive: 2, psnr: 100, minPsnr: 34 },
      { threshold: 0.8, maxConsecutive: 2, psnr: 100, minPsnr: 30 },
    ]);
    expect(server.output()).not.toContain('onnxruntime-node is blocked');
  });

  it('the same preload stops the ONNX pipeline (the block works)', { timeout: 60_000 }, () => {
    const r = spawnSync(
      process.execPath,
      ['--require', BLOCK, CLI, 'generate', '--prompt', 'x', '--model', 'models/flux-tiny', '--size', '64x64'],
      { cwd: REPO_ROOT, encoding: 'utf8', timeout: 50_000, env: { ...process.env, FLUXQL_FROM_SOURCE: '1' } },
    );
    expect(r.status).not.toBe(0);
    expect(`${r.stdout}${r.stderr}`).toContain('onnxruntime-node is blocked');
  });
});
