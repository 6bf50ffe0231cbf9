/**
 * Structured logs of a real `fluxql serve` process: JSON lines on stdout, a request id per request (the client's
 * X-Request-Id, else a generated one, echoed in the response), and one line per job transition naming the job id
 * of a REST request. The bearer token never appears in the log.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/paths.ts';
import { eventually } from '../helpers/test-server.ts';

const TOKEN = 'log-test-token-5678';
let proc: ChildProcess;
let stdout = '';
let url: string;
let imageDir: string;

type Line = Record<string, unknown>;
const lines = (): Line[] =>
  stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Line);

beforeAll(async () => {
  imageDir = await mkdtemp(join(tmpdir(), 'fluxql-logs-'));
  proc = spawn(process.execPath, [resolve(REPO_ROOT, 'bin/fluxql.js'), 'serve'], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      // flux-tiny, named: the default is flux-mini when installed.
      MODEL_REPO: resolve(REPO_ROOT, 'models/flux-tiny'),
      PORT: '0',
      HOST: '127.0.0.1',
      IMAGE_DIR: imageDir,
      THREADS: '1',
      AUTH_TOKEN: TOKEN,
      LOG_LEVEL: 'info',
      LOG_PRETTY: '',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  proc.stdout?.on('data', (c: Buffer) => {
    stdout += c.toString();
  });
  url = await eventually(() => {
    const m = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout);
    expect(m).not.toBeNull();
    return (m as RegExpExecArray)[1] as string;
  });
});

afterAll(async () => {
  if (proc && proc.exitCode === null) {
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  }
  if (imageDir) await rm(imageDir, { recursive: true, force: true });
});

describe('JSON logs', () => {
  it('writes every stdout line as JSON with a level and a time', () => {
    const all = lines();
    expect(all.length).toBeGreaterThan(0);
    for (const l of all) expect(l).toMatchObject({ level: expect.any(String), time: expect.any(String) });
    expect(all.some((l) => l.role === 'all' && typeof l.url === 'string')).toBe(true);
  });

  it("names a REST request's id and its job id, then one line per job transition", async () => {
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'x-request-id': 'req-abc.123' },
      body: JSON.stringify({ prompt: 'a red fox', size: '64x64', num_inference_steps: 2, seed: 1 }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-request-id')).toBe('req-abc.123');
    const jobId = res.headers.get('x-job-id');
    expect(jobId).toMatch(/^[0-9a-f-]{36}$/);

    const request = await eventually(() => {
      const l = lines().find((x) => x.reqId === 'req-abc.123' && x.jobId === jobId);
      expect(l).toBeDefined();
      return l as Line;
    });
    expect(request).toMatchObject({ level: 'info', res: { statusCode: 200 } });
    const events = lines()
      .filter((l) => l.jobId === jobId && typeof l.event === 'string')
      .map((l) => l.event);
    expect(events).toEqual(['job.queued', 'job.started', 'job.succeeded']);
    const done = lines().find((l) => l.jobId === jobId && l.event === 'job.succeeded') as Line;
    expect(done).toMatchObject({ mode: 'original', size: '64x64', steps: 2, images: 1 });
    expect(done.durationMs).toEqual(expect.any(Number));
    expect(stdout).not.toContain(TOKEN);
  });

  it('generates a request id when the client sends none (or a malformed one) and echoes it', async () => {
    for (const given of [undefined, 'bad id with spaces']) {
      const res = await fetch(`${url}/v1/models`, {
        headers: { authorization: `Bearer ${TOKEN}`, ...(given ? { 'x-request-id': given } : {}) },
      });
      const id = res.headers.get('x-request-id');
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      await eventually(() => expect(lines().some((l) => l.reqId === id)).toBe(true));
    }
  });

  it('logs a cancelled job with its reason', async () => {
    const ctl = new AbortController();
    const pending = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'slow', size: '256x256', num_inference_steps: 50 }),
      signal: ctl.signal,
    }).catch(() => undefined);
    const queued = await eventually(() => {
      const l = lines().find((x) => x.event === 'job.queued' && x.size === '256x256');
      expect(l).toBeDefined();
      return l as Line;
    });
    ctl.abort();
    await pending;
    await eventually(() => {
      const l = lines().find((x) => x.event === 'job.canceled' && x.jobId === queued.jobId);
      expect(l).toMatchObject({ reason: 'client disconnected' });
    });
  });
});
