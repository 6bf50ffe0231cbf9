/** The `fluxql` command line as a user runs it: generate writes real images; bad options fail with a clear message. */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/paths.ts';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'bin/fluxql.js');
const out = mkdtempSync(join(tmpdir(), 'fluxql-cli-'));

describe('fluxql generate', () => {
  it('generates a 512x512, 28-step PNG with flux-tiny', async () => {
    const file = join(out, 'kitten.png');
    const { stderr } = await run(process.execPath, [
      CLI,
      'generate',
      '--model',
      join(REPO_ROOT, 'models/flux-tiny'),
      '--prompt',
      'Kitten eating a banana',
      '--out',
      file,
      '--size',
      '512x512',
      '--steps',
      '28',
      '--seed',
      '3',
    ]);
    expect(stderr).toMatch(/wrote .*kitten\.png \(512x512, 28 steps\)/);
    const meta = await sharp(file).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 512, 512]);
    const stats = await sharp(file).stats();
    expect(stats.channels.some((c) => c.stdev > 1)).toBe(true); // not a blank image
  });

  it('writes WebP and JPEG by extension, deterministically for a seed', async () => {
    const args = ['generate', '--prompt', 'a lighthouse', '--size', '128x64', '--steps', '2', '--seed', '9'];
    await run(process.execPath, [CLI, ...args, '--out', join(out, 'a.webp')]);
    await run(process.execPath, [CLI, ...args, '--out', join(out, 'b.jpg')]);
    await run(process.execPath, [CLI, ...args, '--out', join(out, 'c.png')]);
    await run(process.execPath, [CLI, ...args, '--out', join(out, 'd.png')]);
    expect((await sharp(join(out, 'a.webp')).metadata()).format).toBe('webp');
    expect((await sharp(join(out, 'b.jpg')).metadata()).format).toBe('jpeg');
    const [c, d] = await Promise.all(['c.png', 'd.png'].map((f) => sharp(join(out, f)).raw().toBuffer()));
    expect(c!.equals(d!)).toBe(true);
  });

  it('fails clearly on a size that is not a multiple of 16 and on an unknown extension', async () => {
    await expect(
      run(process.execPath, [CLI, 'generate', '--prompt', 'x', '--size', '500x512', '--out', join(out, 'x.png')]),
    ).rejects.toMatchObject({
      stderr: expect.stringMatching(/width.*multiple of 16.*500/),
    });
    await expect(
      run(process.execPath, [CLI, 'generate', '--prompt', 'x', '--out', join(out, 'x.gif')]),
    ).rejects.toMatchObject({
      stderr: expect.stringMatching(/--out must end in/),
    });
  });
});

describe('fluxql compile', () => {
  it('builds every mode ahead of serving, planned ones included, into CACHE_DIR (alias FLUXQL_CACHE_DIR)', async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), 'fluxql-compile-'));
    const compile = (env: NodeJS.ProcessEnv) =>
      // flux-tiny, named: the default model is flux-mini when installed, which plans and compiles for longer.
      run(
        process.execPath,
        [CLI, 'compile', '--model', join(REPO_ROOT, 'models/flux-tiny'), '--mode', 'original', 'XL', 'L', 'M', 'S'],
        {
          env: { ...process.env, CACHE_DIR: '', FLUXQL_CACHE_DIR: '', ...env },
        },
      );
    const lines = (stdout: string) =>
      stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { mode: string; manifest: string; cacheDir: string });
    const first = lines((await compile({ CACHE_DIR: cacheDir })).stdout);
    expect(first.map((l) => l.mode)).toEqual(['original', 'XL', 'L', 'M', 'S']);
    for (const l of first) {
      expect(l.cacheDir).toBe(cacheDir);
      expect(l.manifest.startsWith(join(cacheDir, 'engines'))).toBe(true);
      expect(existsSync(l.manifest)).toBe(true);
    }
    // Planned modes carry their plan in the manifest; S's step-cache threshold is calibrated and cached.
    for (const l of first.filter((l) => ['L', 'M', 'S'].includes(l.mode))) {
      expect(readFileSync(l.manifest, 'utf8')).toMatch(/"planSummary"/);
    }
    const plans = readdirSync(join(cacheDir, 'plans'));
    expect(plans.some((f) => f.endsWith('-stepcache.json'))).toBe(true);
    // The alias reads the same cache: everything is found, nothing is planned or compiled again.
    const again = await compile({ FLUXQL_CACHE_DIR: cacheDir });
    expect(lines(again.stdout).map((l) => l.manifest)).toEqual(first.map((l) => l.manifest));
    expect(again.stderr).not.toMatch(/compiling|planning/);
    rmSync(cacheDir, { recursive: true, force: true });
  });
});
