/**
 * Static checks of the Dockerfile and compose.yaml (no Docker daemon here): a small Dockerfile parser with
 * hadolint-style rules, compose parsed with `yaml` and held against config.ts, and the cuDNN helper script of the
 * GPU build run against a fake tree. The build stage's commands themselves run in test/integration/build.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ENV_DOCS } from '../../src/config.ts';
import { REPO_ROOT } from '../helpers/paths.ts';

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  image: string;
  name: string;
  body: Instruction[];
}

/** Dockerfile → stages (continuation lines joined, comments and parser directives dropped). */
function parseDockerfile(text: string): { args: Map<string, string>; stages: Stage[] } {
  const logical = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of logical) {
    const [, op, rest] = /^(\w+)\s+(.*)$/.exec(line) ?? [];
    if (!op || rest === undefined) throw new Error(`cannot parse: ${line}`);
    const upper = op.toUpperCase();
    if (upper === 'ARG' && stages.length === 0) {
      const [k, v] = rest.split('=');
      args.set(k!, v ?? '');
    } else if (upper === 'FROM') {
      const m = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest)!;
      const image = m[1]!.replace(/\$\{(\w+)\}/g, (_, k: string) => args.get(k) ?? `\${${k}}`);
      stages.push({ image, name: m[2] ?? `stage${stages.length}`, body: [] });
    } else {
      stages.at(-1)!.body.push({ op: upper, args: rest });
    }
  }
  return { args, stages };
}

const dockerfile = parseDockerfile(readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8'));
const stage = (name: string) => dockerfile.stages.find((s) => s.name === name)!;
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  scripts: Record<string, string>;
  engines: { node: string };
};
const RUNTIMES = ['runtime', 'runtime-cuda'];

describe('Dockerfile', () => {
  it('has the build, engine and runtime stages, the CPU runtime last (the default target)', () => {
    expect(dockerfile.stages.map((s) => s.name)).toEqual(['build', 'engine', 'node', 'runtime-cuda', 'runtime']);
  });

  it('runs Node 24 LTS (>= 22, within package.json engines) and builds the engine with CUDA 13 + cuDNN', () => {
    const node = Number(dockerfile.args.get('NODE_VERSION'));
    expect(node % 2 === 0 && node >= 22).toBe(true); // even majors are the LTS lines
    const min = Number(/>=\s*(\d+)/.exec(pkg.engines.node)![1]);
    expect(node).toBeGreaterThanOrEqual(min);
    expect(stage('build').image).toBe(`node:${node}-bookworm-slim`);
    expect(stage('engine').image).toMatch(/^nvidia\/cuda:13\.\d+\.\d+-cudnn-devel-ubuntu/);
    expect(stage('runtime-cuda').image).toMatch(/^nvidia\/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu/);
    const engineRun = stage('engine')
      .body.filter((i) => i.op === 'RUN')
      .map((i) => i.args)
      .join('\n');
    expect(engineRun).toMatch(/cmake -S engines\/cuda -B engines\/cuda\/build -G Ninja/);
    expect(engineRun).toMatch(/-DFQ_CUDNN_DIR=/);
    expect(engineRun).toMatch(/apt-get install .*cmake ninja-build/);
  });

  it('pins no image to latest and uses only images whose tags are spelled out', () => {
    for (const s of dockerfile.stages) {
      expect(s.image, s.name).not.toMatch(/:latest$|\$\{/);
      expect(s.image, s.name).toMatch(/:/);
    }
  });

  it('copies only files that exist (or come from an earlier stage) and runs only npm scripts that exist', () => {
    const names = dockerfile.stages.map((s) => s.name);
    for (const [i, s] of dockerfile.stages.entries()) {
      for (const ins of s.body.filter((x) => x.op === 'COPY')) {
        const from = /--from=(\S+)/.exec(ins.args)?.[1];
        const parts = ins.args.split(/\s+/).filter((p) => !p.startsWith('--'));
        const sources = parts.slice(0, -1);
        if (from) {
          expect(names.indexOf(from), `${s.name}: COPY --from=${from}`).toBeGreaterThanOrEqual(0);
          expect(names.indexOf(from), `${s.name}: COPY --from=${from} comes earlier`).toBeLessThan(i);
          continue;
        }
        for (const src of sources.filter((x) => x !== '.'))
          expect(existsSync(join(REPO_ROOT, src)), `${s.name}: COPY ${src}`).toBe(true);
      }
      for (const ins of s.body.filter((x) => x.op === 'RUN')) {
        for (const m of ins.args.matchAll(/npm run ([\w:-]+)/g))
          expect(pkg.scripts[m[1]!], `npm run ${m[1]}`).toBeDefined();
        for (const m of ins.args.matchAll(/\b(docker\/[\w.-]+)/g))
          expect(existsSync(join(REPO_ROOT, m[1]!)), m[1]).toBe(true);
      }
    }
  });

  it('cleans apt lists and skips recommends in every apt-get install (hadolint DL3009, DL3015)', () => {
    const runs = dockerfile.stages.flatMap((s) =>
      s.body.filter((i) => i.op === 'RUN' && /apt-get install/.test(i.args)),
    );
    expect(runs.length).toBeGreaterThanOrEqual(3);
    for (const r of runs) {
      expect(r.args).toMatch(/apt-get update/);
      expect(r.args).toMatch(/apt-get install -y --no-install-recommends/);
      expect(r.args).toMatch(/rm -rf \/var\/lib\/apt\/lists/);
    }
  });

  it('ends each runtime as a non-root user with a health check, tini and the compiled CLI, auth required', () => {
    for (const name of RUNTIMES) {
      const body = stage(name).body;
      const last = (op: string) => body.filter((i) => i.op === op).at(-1)?.args;
      expect(last('USER'), name).toMatch(/^(node|fluxql)$/);
      expect(last('HEALTHCHECK'), name).toMatch(/CMD \["node", "docker\/healthcheck\.mjs"\]/);
      expect(JSON.parse(last('ENTRYPOINT')!)).toEqual(['/usr/bin/tini', '--', 'node', 'bin/fluxql.js']);
      expect(JSON.parse(last('CMD')!)).toEqual(['serve']);
      expect(
        body
          .filter((i) => i.op === 'ENV')
          .map((i) => i.args)
          .join(' '),
      ).toMatch(/AUTH_REQUIRED=1/);
      // The app comes from the build stage's assembled /app: compiled JavaScript, no sources, no tsx.
      expect(
        body.some((i) => i.op === 'COPY' && /--from=build .*\/app \/app$/.test(i.args)),
        name,
      ).toBe(true);
      for (const i of body.filter((x) => x.op === 'WORKDIR')) expect(i.args.startsWith('/')).toBe(true);
    }
    const cuda = stage('runtime-cuda').body;
    expect(cuda.some((i) => i.op === 'COPY' && /--from=engine .*fluxql-engine/.test(i.args))).toBe(true);
    expect(
      cuda
        .filter((i) => i.op === 'ENV')
        .map((i) => i.args)
        .join(' '),
    ).toMatch(/ENGINE=cuda/);
  });

  it('sets only environment variables the server reads (or Node/OS ones)', () => {
    const known = new Set([...Object.keys(ENV_DOCS), 'NODE_ENV', 'ONNXRUNTIME_NODE_INSTALL']);
    const names = dockerfile.stages.flatMap((s) =>
      s.body.filter((i) => i.op === 'ENV').flatMap((i) => [...i.args.matchAll(/(\w+)=/g)].map((m) => m[1]!)),
    );
    expect(names.filter((n) => !known.has(n))).toEqual([]);
  });
});

describe('compose.yaml', () => {
  const compose = parse(readFileSync(join(REPO_ROOT, 'compose.yaml'), 'utf8'), { merge: true }) as {
    services: Record<string, Record<string, unknown>>;
  };
  const services = compose.services;
  const env = (name: string) => (services[name]!.environment ?? {}) as Record<string, string>;

  it('sets only variables that config.ts reads', () => {
    const known = new Set(Object.keys(ENV_DOCS));
    for (const [name] of Object.entries(services).filter(([n]) => n !== 'redis')) {
      expect(
        Object.keys(env(name)).filter((k) => !known.has(k)),
        name,
      ).toEqual([]);
    }
  });

  it('requires AUTH_TOKEN on the API (fails fast when unset) and serves REDIS_URL to every node', () => {
    expect(env('api').AUTH_TOKEN).toMatch(/^\$\{AUTH_TOKEN:\?.+\}$/);
    for (const name of ['api', 'worker', 'worker-gpu0', 'worker-gpu1'])
      expect(env(name).REDIS_URL).toBe('redis://redis:6379');
  });

  it('runs CPU workers in the cpu profile and one CUDA worker per GPU, each reserving its own card', () => {
    expect(services.worker!.profiles).toEqual(['cpu']);
    const gpus = Object.keys(services).filter((n) => n.startsWith('worker-gpu'));
    const ids = gpus.map((n) => {
      const svc = services[n] as {
        image: string;
        build: { target: string };
        deploy: { resources: { reservations: { devices: { driver: string; device_ids: string[] }[] } } };
      };
      expect(svc.image).toBe('fluxql:cuda');
      expect(svc.build.target).toBe('runtime-cuda');
      expect(env(n).ENGINE).toBe('cuda');
      const [device] = svc.deploy.resources.reservations.devices;
      expect(device!.driver).toBe('nvidia');
      expect(device!.device_ids).toHaveLength(1);
      return device!.device_ids[0];
    });
    expect(new Set(ids).size).toBe(gpus.length);
    expect(gpus.length).toBeGreaterThanOrEqual(2);
    for (const n of ['worker', ...gpus]) {
      expect(services[n]!.command).toEqual(['serve', '--role', 'worker']);
      expect(services[n]!.healthcheck).toEqual({ disable: true });
    }
    expect(services.api!.command).toEqual(['serve', '--role', 'api']);
    expect(services.api!.profiles).toBeUndefined(); // the API runs with either profile
  });

  it('names only docs that exist (here, in the Dockerfile and in the README)', () => {
    for (const file of ['compose.yaml', 'Dockerfile', 'README.md', 'docs/DOCKER.md', 'docs/SCALE_OUT.md']) {
      const text = readFileSync(join(REPO_ROOT, file), 'utf8');
      for (const m of text.matchAll(/\bdocs\/([A-Z_]+\.md)/g))
        expect(existsSync(join(REPO_ROOT, 'docs', m[1]!)), `${file} → docs/${m[1]}`).toBe(true);
    }
  });
});

describe('docker/cudnn-dir.sh (the GPU build finds cuDNN where NVIDIA images install it)', () => {
  it('links Debian-packaged cuDNN 9 headers and libraries into include/ and lib/', () => {
    const root = mkdtempSync(join(tmpdir(), 'fluxql-cudnn-'));
    const inc = join(root, 'usr/include/x86_64-linux-gnu');
    const lib = join(root, 'usr/lib/x86_64-linux-gnu');
    mkdirSync(inc, { recursive: true });
    mkdirSync(lib, { recursive: true });
    for (const h of ['cudnn_v9.h', 'cudnn_version_v9.h', 'cudnn_graph_v9.h']) writeFileSync(join(inc, h), '');
    for (const l of ['libcudnn.so.9', 'libcudnn.so.9.13.0', 'libcudnn_graph.so.9']) writeFileSync(join(lib, l), '');
    const dest = join(root, 'opt/cudnn');
    const out = execFileSync('sh', [join(REPO_ROOT, 'docker/cudnn-dir.sh'), dest, root], { encoding: 'utf8' });
    expect(out.trim()).toBe(dest);
    for (const h of ['cudnn.h', 'cudnn_version.h', 'cudnn_graph.h'])
      expect(lstatSync(join(dest, 'include', h)).isSymbolicLink(), h).toBe(true);
    for (const l of ['libcudnn.so.9', 'libcudnn_graph.so.9'])
      expect(lstatSync(join(dest, 'lib', l)).isSymbolicLink(), l).toBe(true);
  });

  it('fails with a message when there is no cuDNN', () => {
    const root = mkdtempSync(join(tmpdir(), 'fluxql-nocudnn-'));
    expect(() =>
      execFileSync('sh', [join(REPO_ROOT, 'docker/cudnn-dir.sh'), join(root, 'out'), root], { stdio: 'pipe' }),
    ).toThrow(/no cuDNN 9/);
  });
});
