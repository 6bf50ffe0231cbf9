/**
 * @file A real `fluxql serve` process for integration tests: spawned from bin/fluxql.js on a free local port, its
 * output collected, resolved once it logs the address it serves on; `stop` ends it (SIGTERM) and waits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { expect } from 'vitest';
import { REPO_ROOT } from './paths.ts';
import { eventually } from './test-server.ts';

export interface ServeProcess {
  proc: ChildProcess;
  /** http://127.0.0.1:<port> */
  url: string;
  /** Everything the process wrote so far (stdout and stderr). */
  output(): string;
  /** SIGTERM, then the exit (no-op once it exited). */
  stop(): Promise<void>;
}

/**
 * Starts `node [nodeArgs] bin/fluxql.js serve [args]` with `env` over the test's environment (port 0 on 127.0.0.1,
 * info logs, not pretty). `whileStarting` runs on the output at every poll until the address line appears (an
 * `expect` there keeps a line that must not be printed in the failure).
 */
export async function startServe(opts: {
  args?: string[];
  nodeArgs?: string[];
  env: Record<string, string>;
  whileStarting?: (output: string) => void;
}): Promise<ServeProcess> {
  let out = '';
  const proc = spawn(
    process.execPath,
    [...(opts.nodeArgs ?? []), resolve(REPO_ROOT, 'bin/fluxql.js'), 'serve', ...(opts.args ?? [])],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', LOG_PRETTY: '', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  proc.stdout?.on('data', (c: Buffer) => {
    out += c.toString();
  });
  proc.stderr?.on('data', (c: Buffer) => {
    out += c.toString();
  });
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  };
  try {
    const url = await eventually(() => {
      opts.whileStarting?.(out);
      const m = /serving .* on engine \S+ at (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      expect(m, out).not.toBeNull();
      return (m as RegExpExecArray)[1] as string;
    });
    return { proc, url, output: () => out, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
