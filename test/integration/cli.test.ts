/** The `fluxql` command line as a user runs it: generate writes real images; bad options fail with a clear message. */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { ENV_DOCS } from '../../src/config.ts';
import { layOutHubCache, repoFiles } from '../helpers/hub-files.ts';
import { startHubServer } from '../helpers/hub-server.ts';
import { MODEL_DIR, REPO_ROOT } from '../helpers/paths.ts';

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

  it('edits an image (--image, --mask, --strength) and runs true CFG (--negative-prompt, --true-cfg)', async () => {
    const args = ['generate', '--prompt', 'a door', '--size', '64x64', '--steps', '3', '--seed', '4'];
    await run(process.execPath, [CLI, ...args, '--out', join(out, 'src.png')]);
    const white = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#ffffff' } })
      .png()
      .toFile(join(out, 'mask.png'));
    expect(white.width).toBe(64);
    const edit = ['--image', join(out, 'src.png'), '--strength', '0.5'];
    await run(process.execPath, [CLI, ...args, ...edit, '--out', join(out, 'img2img.png')]);
    await run(process.execPath, [
      CLI,
      ...args,
      ...edit,
      '--mask',
      join(out, 'mask.png'),
      '--out',
      join(out, 'inp.png'),
    ]);
    const cfg = ['--negative-prompt', 'blurry', '--true-cfg', '3'];
    await run(process.execPath, [CLI, ...args, ...cfg, '--out', join(out, 'cfg.png')]);
    const [src, img2img, inp, cfgOut] = await Promise.all(
      ['src.png', 'img2img.png', 'inp.png', 'cfg.png'].map((f) => sharp(join(out, f)).raw().toBuffer()),
    );
    expect(img2img!.equals(src!)).toBe(false);
    // An all-white mask repaints everything: inpainting equals img2img with the same strength and seed.
    expect(inp!.equals(img2img!)).toBe(true);
    expect(cfgOut!.equals(src!)).toBe(false);
    await expect(
      run(process.execPath, [CLI, ...args, '--mask', join(out, 'mask.png'), '--out', join(out, 'x.png')]),
    ).rejects.toMatchObject({ stderr: expect.stringMatching(/--mask needs --image/) });
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

/** Runs the CLI, resolving with its exit code and output whether it succeeds or fails. */
async function cli(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      env: { ...process.env, ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout: string; stderr: string };
    return { code: e.code ?? -1, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Starts `fluxql serve` on a free port; `ready` resolves with its URL and the model it names once it listens. */
function startServe(env: Record<string, string>) {
  const child = spawn(process.execPath, [CLI, 'serve'], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stderr.on('data', (d: Buffer) => (logs += d));
  const ready = new Promise<{ url: string; model: string }>((resolve, reject) => {
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d;
      logs += d;
      const m = /serving (\S+) on engine onnx at (http:\/\/\S+) /.exec(stdout);
      if (m) resolve({ model: m[1]!, url: m[2]! });
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${logs}`)));
  });
  return { child, ready, logs: () => logs };
}

describe('fluxql errors and help', () => {
  // Every case: a non-zero exit, one line on stderr naming the problem, no stack trace.
  const cases: { name: string; args: string[]; env?: Record<string, string>; message: RegExp }[] = [
    {
      name: '--size 500x500',
      args: ['generate', '-p', 'x', '--size', '500x500', '-o', join(out, 'e.png')],
      message: /multiple of 16, got 500/,
    },
    {
      name: '--mode foo',
      args: ['generate', '-p', 'x', '--mode', 'foo', '--size', '64x64', '-o', join(out, 'e.png')],
      message: /unknown mode "foo"; available modes: original/,
    },
    { name: 'serve --role foo', args: ['serve', '--role', 'foo'], message: /--role: "foo" is not supported/ },
    { name: 'PORT=abc', args: ['serve'], env: { PORT: 'abc' }, message: /PORT: must be an integer from 0 to 65535/ },
    {
      name: 'AUTH_REQUIRED=1 without AUTH_TOKEN',
      args: ['serve'],
      env: { AUTH_REQUIRED: '1', AUTH_TOKEN: '' },
      message: /AUTH_TOKEN: required \(AUTH_REQUIRED=1\)/,
    },
    {
      name: 'a missing MODEL_REPO folder',
      args: ['serve'],
      env: { MODEL_REPO: join(out, 'no-such-model') },
      message: /no-such-model: model path not found/,
    },
    {
      name: 'a MODEL_REPO id not in the cache while offline',
      args: ['serve'],
      env: { MODEL_REPO: 'acme/missing', HF_HUB_OFFLINE: '1', HF_HUB_CACHE: join(out, 'empty-hub') },
      message: /acme\/missing@main: not in the Hugging Face cache .* HF_HUB_OFFLINE=1/,
    },
  ];
  for (const c of cases) {
    it(`${c.name}: one clear line, exit 2, no stack trace`, async () => {
      const r = await cli(c.args, { PORT: '0', ...c.env });
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(c.message);
      expect(r.stderr).toMatch(/^fluxql: /);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    });
  }

  it('--version prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await cli(['--version']);
    expect([r.code, r.stdout.trim()]).toEqual([0, version]);
  });

  it('serve --help lists every environment setting of config.ts', async () => {
    const r = await cli(['serve', '--help']);
    expect(r.code).toBe(0);
    for (const name of Object.keys(ENV_DOCS)) expect(r.stdout).toMatch(new RegExp(`^  ${name} +\\S`, 'm'));
    expect(r.stdout).toMatch(/^ {2}PORT +HTTP port .*\(default: 8000\)/m);
  });

  it('generate reports its phases in order: encode, denoise, decode', async () => {
    const r = await cli(['generate', '-p', 'a cat', '--size', '64x64', '--steps', '2', '-o', join(out, 'p.png')]);
    expect(r.code).toBe(0);
    const phases = r.stderr.split('\n').filter((l) => /^(encode|denoise|decode)\b/.test(l));
    expect(phases).toEqual(['encode', 'denoise (2 steps)', 'decode']);
  });
});

describe('generate --model org/name against a hub (HF_ENDPOINT: a local server speaking the hub file API)', () => {
  it('downloads the model into HF_HUB_CACHE with the token, then generates from it', async () => {
    const hub = await startHubServer({ repo: 'acme/flux-tiny', files: repoFiles(MODEL_DIR), token: 'hf_cli' });
    try {
      const cache = join(out, 'hub-online');
      const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HUGGINGFACE_ACCESS_TOKEN: 'hf_cli' };
      const file = join(out, 'online.png');
      const args = ['generate', '-p', 'a fox', '--model', 'acme/flux-tiny', '--size', '64x64', '--steps', '2'];
      const r = await cli([...args, '-o', file], env);
      expect(r.stderr).toMatch(/acme\/flux-tiny@main: downloading \d+ files/);
      expect(r.stderr).toMatch(/^download transformer\/diffusion_pytorch_model\.safetensors$/m);
      expect(r.stderr).toMatch(/wrote .*online\.png/);
      expect(existsSync(join(cache, 'models--acme--flux-tiny', 'refs', 'main'))).toBe(true);
      // Offline now, from what was downloaded.
      const again = await cli([...args, '-o', join(out, 'offline.png')], { ...env, HF_HUB_OFFLINE: '1' });
      expect(again.stderr).not.toMatch(/download/);
      expect(again.stderr).toMatch(/wrote .*offline\.png/);
    } finally {
      await hub.close();
    }
  });

  it('serve downloads MODEL_REPO with HF_TOKEN, logging its progress, then serves it', async () => {
    const hub = await startHubServer({ repo: 'acme/flux-tiny', files: repoFiles(MODEL_DIR), token: 'hf_srv' });
    const server = startServe({
      MODEL_REPO: 'acme/flux-tiny',
      HF_ENDPOINT: hub.url,
      HF_HUB_CACHE: join(out, 'hub-serve'),
      HF_TOKEN: 'hf_srv',
      IMAGE_DIR: join(out, 'img-serve'),
    });
    try {
      const { url, model } = await server.ready;
      expect(model).toBe('acme/flux-tiny');
      // JSON log lines (stdout) from the hub layer.
      expect(server.logs()).toMatch(/"component":"hub".*acme\/flux-tiny@main: downloading \d+ files/);
      expect(server.logs()).toMatch(/"percent":100,.*downloading acme\/flux-tiny: 100% \(/);
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
    } finally {
      server.child.kill('SIGTERM');
      await hub.close();
    }
  });
});

describe('MODEL_REPO=org/name with HF_HUB_OFFLINE=1 (flux-tiny laid out as a Hugging Face cache)', () => {
  const hubCache = join(out, 'hf-home', 'hub');
  layOutHubCache(MODEL_DIR, hubCache, 'acme/flux-tiny');
  // HF_HOME (not HF_HUB_CACHE): the cache is found at <HF_HOME>/hub, as huggingface_hub finds it.
  const env = { HF_HUB_OFFLINE: '1', HF_HOME: join(out, 'hf-home'), HF_ENDPOINT: 'http://127.0.0.1:9' };

  it('generate --model org/name writes an image from the cache', async () => {
    const file = join(out, 'hub.png');
    const r = await cli(
      ['generate', '-p', 'a fox', '--model', 'acme/flux-tiny', '--size', '64x64', '--steps', '2', '-o', file],
      env,
    );
    expect(r.stderr).toMatch(/wrote .*hub\.png \(64x64, 2 steps\)/);
    expect((await sharp(file).metadata()).width).toBe(64);
  });

  it('serve answers a REST generation', async () => {
    const server = startServe({ ...env, MODEL_REPO: 'acme/flux-tiny', IMAGE_DIR: join(out, 'img') });
    try {
      const { url, model } = await server.ready;
      expect(model).toBe('acme/flux-tiny');
      const res = await fetch(`${url}/v1/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'a fox', width: 64, height: 64, num_inference_steps: 2, seed: 1 }),
      });
      expect(res.status).toBe(200);
      const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
      expect([meta.format, meta.width]).toEqual(['webp', 64]);
    } finally {
      server.child.kill('SIGTERM');
    }
  });
});
