/**
 * A flood of large unauthenticated WebSocket messages against a real `fluxql serve` process with AUTH_TOKEN: wrong
 * tokens on the upgrade are refused before any frame is read, and 90 MB `connection_init` frames without a token
 * close the socket at the frame header (WS_MAX_PAYLOAD, 1009). The server's resident memory (`/proc/<pid>/status`,
 * sampled through the flood) stays within 150 MB of where it started, and `/healthz` keeps answering.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import WebSocket from 'ws';
import { disposeCluster, residentBytes, startServe } from '../../tools/cluster.ts';

const tmp = mkdtempSync(join(tmpdir(), 'fluxql-ws-flood-'));
afterAll(async () => {
  await disposeCluster();
  rmSync(tmp, { recursive: true, force: true });
});

const MB = 1024 * 1024;

/** Opens a socket and sends `payload` once open; resolves with the close code (or the HTTP status of a refusal). */
function attack(wsUrl: string, payload: Buffer, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl, 'graphql-transport-ws', { headers });
    ws.on('error', () => {});
    ws.on('unexpected-response', (_req, res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    ws.on('open', () => ws.send(payload, () => {}));
    ws.on('close', (code) => resolve(code));
  });
}

it('stays within 150 MB of its start and keeps answering', async () => {
  const server = await startServe({ IMAGE_DIR: join(tmp, 'images'), AUTH_TOKEN: 'flood-test-token', MODEL_BATCH: '1' });
  const pid = server.proc.pid as number;
  const wsUrl = `${server.url.replace('http', 'ws')}/graphql`;
  // Warm the server up (first requests allocate) before taking the baseline.
  for (let i = 0; i < 3; i++) await fetch(`${server.url}/healthz`);
  const start = residentBytes(pid);
  let peak = start;
  const sampler = setInterval(() => {
    peak = Math.max(peak, residentBytes(pid));
  }, 20);
  const healthMs: number[] = [];
  const prober = setInterval(() => {
    const t0 = performance.now();
    fetch(`${server.url}/healthz`).then(
      () => healthMs.push(performance.now() - t0),
      () => {}, // in flight when the server is killed at the end
    );
  }, 100);

  const big = Buffer.alloc(90 * MB, JSON.stringify({ type: 'connection_init', payload: { authorization: 'x' } }));
  const mid = Buffer.alloc(1 * MB, 'y');
  const codes: number[] = [];
  for (let round = 0; round < 3; round++) {
    codes.push(
      ...(await Promise.all([
        // No token on the upgrade: the socket opens, the first frame is refused at its header.
        ...Array.from({ length: 3 }, () => attack(wsUrl, big)),
        ...Array.from({ length: 30 }, () => attack(wsUrl, mid)),
        // A wrong token on the upgrade: 401, no WebSocket at all.
        ...Array.from({ length: 3 }, () => attack(`${wsUrl}?token=wrong`, big)),
        ...Array.from({ length: 3 }, () => attack(wsUrl, big, { authorization: 'Bearer wrong' })),
      ])),
    );
  }
  clearInterval(sampler);
  clearInterval(prober);
  peak = Math.max(peak, residentBytes(pid));
  const growthMb = (peak - start) / MB;
  console.log(
    `ws flood: RSS start ${(start / MB).toFixed(0)} MB, peak ${(peak / MB).toFixed(0)} MB (+${growthMb.toFixed(0)} MB); ` +
      `healthz max ${Math.max(...healthMs).toFixed(0)} ms over ${healthMs.length} probes`,
  );
  // 1009: refused at the frame header; 401: refused on the upgrade; 4408: the frame was still arriving when the
  // 3 s connection_init timeout closed the socket (a loaded machine sends slowly). Never an accepted connection.
  expect(
    codes.every((c) => [1009, 401, 4408].includes(c)),
    String(codes),
  ).toBe(true);
  expect(codes).toContain(1009);
  expect(codes).toContain(401);
  expect(growthMb).toBeLessThan(150);
  expect(healthMs.length).toBeGreaterThan(0);
  const health = await fetch(`${server.url}/healthz`);
  expect(health.status).toBe(200);
  await server.kill('SIGKILL');
});
