/**
 * The production build (`npm run build`: tsc with tsconfig.build.json) as the Docker image runs it: compiled into a
 * scratch folder, then started on plain Node with a hook that fails any import of tsx or of a `.ts` file. Covers the
 * CLI, `serve` with its ONNX engine process (engine-process/entry.js from the build), and the entry-module helper.
 */
import { execFile, spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveEntryModule } from '../../src/shared/entry-module.ts';
import { REPO_ROOT } from '../helpers/paths.ts';

const run = promisify(execFile);
const NO_TSX = join(REPO_ROOT, 'test/fixtures/no-tsx/register.mjs');
// Inside the repository, so the build finds node_modules and package.json (models/, web/) by walking up.
mkdirSync(join(REPO_ROOT, '.cache'), { recursive: true });
const scratch = mkdtempSync(join(REPO_ROOT, '.cache', 'build-test-'));
const dist = join(scratch, 'dist');
// The entry point beside the build, as in the image (no src/ next to it, so it picks dist/): it hands the CLI its
// engine compiler (src/cli/main.ts only exports `runCli`).
const main = join(scratch, 'bin/fluxql.js');

/** Starts `node <args>` as `fluxql serve` and resolves with its URL once it listens. */
function startServe(args: string[], env: Record<string, string>, cwd = REPO_ROOT) {
  const child = spawn(process.execPath, args, {
    cwd,
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stderr.on('data', (d: Buffer) => (logs += d));
  const url = new Promise<string>((resolve, reject) => {
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d;
      const m = / at (http:\/\/\S+) /.exec(stdout);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${logs}`)));
  });
  return { child, url, logs: () => logs };
}

beforeAll(async () => {
  mkdirSync(join(scratch, 'bin'));
  copyFileSync(join(REPO_ROOT, 'bin/fluxql.js'), main);
  const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
  const args = ['-p', join(REPO_ROOT, 'tsconfig.build.json'), '--outDir', dist];
  await run(process.execPath, [tsc, ...args, '--tsBuildInfoFile', join(scratch, '.tsbuildinfo')], { cwd: REPO_ROOT });
  // The Dockerfile's `npm run build:web`, into the scratch checkout (not web/dist, which the browser tests build).
  const vite = join(REPO_ROOT, 'node_modules/vite/bin/vite.js');
  const webOut = join(scratch, 'checkout/web/dist');
  await run(process.execPath, [vite, 'build', '--config', join(REPO_ROOT, 'web/vite.config.ts'), '--outDir', webOut], {
    cwd: REPO_ROOT,
  });
}, 300_000);
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function jsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? jsFiles(p) : n.endsWith('.js') ? [p] : [];
  });
}

describe('production build', () => {
  it('emits JavaScript whose relative imports all name .js files', () => {
    const files = jsFiles(dist);
    expect(files).toContain(join(dist, 'src/pipeline/engine-process/entry.js'));
    expect(files).toContain(join(dist, 'engines/compiler/port.js'));
    const tsImports = files.flatMap((f) =>
      [...readFileSync(f, 'utf8').matchAll(/(?:from\s*|import\s*\(\s*)["'](\.[^"']*\.ts)["']/g)].map(
        (m) => `${f}: ${m[1]}`,
      ),
    );
    expect(tsImports).toEqual([]);
  });

  it('runs the CLI on plain Node without tsx', async () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    const { stdout } = await run(process.execPath, ['--import', NO_TSX, main, '--version']);
    expect(stdout.trim()).toBe(version);
    const help = await run(process.execPath, ['--import', NO_TSX, main, 'serve', '--help']);
    expect(help.stdout).toMatch(/MODEL_REPO/);
  });

  it('serves a generation from the build, the ONNX engine process included', async () => {
    const server = startServe(['--import', NO_TSX, main, 'serve'], { IMAGE_DIR: join(scratch, 'images') });
    try {
      const url = await server.url;
      const res = await fetch(`${url}/v1/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'a boat', width: 64, height: 64, num_inference_steps: 2, seed: 4 }),
      });
      expect(res.status).toBe(200);
      expect((await sharp(Buffer.from(await res.arrayBuffer())).metadata()).width).toBe(64);
      expect(server.logs()).not.toMatch(/compiled build imported/);
    } finally {
      server.child.kill('SIGTERM');
    }
  });

  it("runs as the image lays it out: docker/assemble-app.sh's /app, the entrypoint and the health check", async () => {
    // The build stage's last step, with the scratch build as dist/ (assemble-app.sh reads ./dist).
    const checkout = join(scratch, 'checkout'); // web/dist is already there (beforeAll)
    for (const entry of ['package.json', 'bin', 'models', 'bench', 'docker', 'node_modules'])
      symlinkSync(join(REPO_ROOT, entry), join(checkout, entry));
    symlinkSync(dist, join(checkout, 'dist'));
    const app = join(scratch, 'app');
    await run('sh', ['docker/assemble-app.sh', app, '--link-node-modules'], { cwd: checkout });
    expect(existsSync(join(app, 'src'))).toBe(false); // no TypeScript sources: bin/fluxql.js must pick dist/
    expect(existsSync(join(app, 'dist/src/cli/main.js'))).toBe(true);
    expect(existsSync(join(app, 'web/dist/index.html'))).toBe(true);

    // ENTRYPOINT ["tini", "--", "node", "bin/fluxql.js"] + a command, from WORKDIR /app.
    const version = await run(process.execPath, ['--import', NO_TSX, 'bin/fluxql.js', '--version'], { cwd: app });
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    // The images set AUTH_REQUIRED=1: without a token the server refuses to start, with one line.
    const refused = await run(process.execPath, ['bin/fluxql.js', 'serve'], {
      cwd: app,
      env: { ...process.env, AUTH_REQUIRED: '1', AUTH_TOKEN: '' },
    }).catch((e: { code: number; stderr: string }) => e);
    expect(refused).toMatchObject({ code: 2, stderr: expect.stringMatching(/^fluxql: AUTH_TOKEN: required/) });

    const server = startServe(
      ['--import', NO_TSX, 'bin/fluxql.js', 'serve'],
      {
        AUTH_REQUIRED: '1',
        AUTH_TOKEN: 'secret',
        IMAGE_DIR: join(scratch, 'app-images'),
      },
      app,
    );
    try {
      const port = new URL(await server.url).port;
      // HEALTHCHECK CMD ["node", "docker/healthcheck.mjs"]: passes against the server, fails on a closed port.
      const ok = await run(process.execPath, ['docker/healthcheck.mjs'], {
        cwd: app,
        env: { ...process.env, PORT: port },
      });
      expect(ok.stderr).toBe('');
      const res = await fetch(`${await server.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: '{ models { id } }' }),
      });
      expect(res.status).toBe(401); // auth on
    } finally {
      server.child.kill('SIGTERM');
    }
    const closed = await run(process.execPath, ['docker/healthcheck.mjs'], {
      cwd: app,
      env: { ...process.env, PORT: '9' },
    }).catch((e: { code: number }) => e);
    expect(closed).toMatchObject({ code: 1 });
  });

  it('resolves worker / child-process entries to the build or the sources', () => {
    const dir = mkdtempSync(join(scratch, 'entry-'));
    writeFileSync(join(dir, 'child.ts'), '');
    writeFileSync(join(dir, 'child.js'), '');
    const fromCompiled = resolveEntryModule('./child.ts', pathToFileURL(join(dir, 'parent.js')));
    expect(fromCompiled).toEqual({ path: join(dir, 'child.js'), typescript: false, nodeArgs: [join(dir, 'child.js')] });
    const fromSource = resolveEntryModule('./child.ts', pathToFileURL(join(dir, 'parent.ts')));
    expect(fromSource).toEqual({
      path: join(dir, 'child.ts'),
      typescript: true,
      nodeArgs: ['--import', 'tsx', join(dir, 'child.ts')],
    });
    expect(() => resolveEntryModule('./missing.ts', pathToFileURL(join(dir, 'parent.ts')))).toThrow(/not found/);
  });
});
