/**
 * @file Process test harness: a private `redis-server` on a free port and real `fluxql serve [--role …]`
 * processes. Everything started here is killed by {@link disposeCluster}.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const started: ChildProcess[] = [];

/** The redis-server binary, or undefined when it is not installed (the suite then skips). */
export function findRedisServer(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path ? path : undefined;
}

/** A port nobody listens on right now (listen on 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

/** A started process and its output so far. */
export interface NodeProcess {
  proc: ChildProcess;
  /** Everything printed (stdout and stderr). */
  output(): string;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Spawns a command and resolves once a line of its output matches `ready` (rejects if it exits first). */
async function spawnUntil(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  ready: RegExp,
): Promise<NodeProcess & { match: RegExpMatchArray }> {
  const proc = spawn(cmd, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(proc);
  let out = '';
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const match = await new Promise<RegExpMatchArray>((resolveMatch, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = ready.exec(out);
      if (m) resolveMatch(m);
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    void exited.then((code) => reject(new Error(`${cmd} ${args.join(' ')} exited (${code}) before ready:\n${out}`)));
  });
  return {
    proc,
    match,
    output: () => out,
    exited,
    async kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/** A private redis-server (no persistence) on a free port. */
export async function startRedis(bin: string): Promise<NodeProcess & { url: string }> {
  const port = await freePort();
  const p = await spawnUntil(
    bin,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    process.env,
    /Ready to accept connections/,
  );
  return { ...p, url: `redis://127.0.0.1:${port}` };
}

/** `fluxql serve --role api` on a free port; resolves with its URL once it listens. */
export async function startApi(env: NodeJS.ProcessEnv): Promise<NodeProcess & { url: string }> {
  const port = await freePort();
  const p = await spawnUntil(
    process.execPath,
    [resolve(REPO_ROOT, 'bin/fluxql.js'), 'serve', '--role', 'api'],
    { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' },
    /API node at (http\S+)/,
  );
  return { ...p, url: p.match[1] as string };
}

/** `fluxql serve` (one process: API and engine) on a free port; resolves with its URL once it listens. */
export async function startServe(env: NodeJS.ProcessEnv): Promise<NodeProcess & { url: string }> {
  const port = await freePort();
  const p = await spawnUntil(
    process.execPath,
    [resolve(REPO_ROOT, 'bin/fluxql.js'), 'serve'],
    { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' },
    /serving \S+ on engine \S+ at (http:\/\/[\d.:]+)/,
  );
  return { ...p, url: p.match[1] as string };
}

/** Resident memory of a process in bytes (Linux `/proc/<pid>/status`). */
export function residentBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  if (!kb) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb) * 1024;
}

/** `fluxql serve --role worker` (flux-tiny unless `env` names a MODEL_REPO); resolves once it takes jobs. */
export async function startWorker(env: NodeJS.ProcessEnv): Promise<NodeProcess & { id: string }> {
  const p = await spawnUntil(
    process.execPath,
    [resolve(REPO_ROOT, 'bin/fluxql.js'), 'serve', '--role', 'worker'],
    // Only the default mode is warmed from the start unless a test asks for more (the others warm on demand). The
    // tests' timings assume flux-tiny, whichever model is the default (flux-mini when installed).
    { MODEL_REPO: resolve(REPO_ROOT, 'models/flux-tiny'), ...process.env, WARM_MODES: 'default', ...env },
    /worker (\S+) serving/,
  );
  return { ...p, id: p.match[1] as string };
}

/** Kills every process started here (SIGKILL: the tests do not depend on a graceful exit here). */
export async function disposeCluster(): Promise<void> {
  await Promise.all(
    started.splice(0).map(async (proc) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    }),
  );
}
