/**
 * Benchmark charts render in Node (vega + vega-lite, no browser) from results files as the benchmarks write them;
 * charts whose results file is absent are skipped.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { renderCharts } from '../../../bench/lib/charts.ts';

const dir = mkdtempSync(join(tmpdir(), 'fluxql-charts-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const machine = { cpu: 'Test CPU', cores: 2 };

describe('renderCharts', () => {
  it('renders latency per mode and throughput vs clients from results files, skipping missing ones', async () => {
    writeFileSync(
      join(dir, 'latency.json'),
      JSON.stringify({
        date: '2026-01-02T00:00:00Z',
        machine,
        settings: { size: 128, steps: 8 },
        results: [
          {
            model: 'model-a',
            rows: [
              { mode: 'original', meanMs: 100, stdMs: 5, medianMs: 99 },
              { mode: 'S', meanMs: 40, stdMs: 2, medianMs: 39 },
            ],
          },
        ],
      }),
    );
    writeFileSync(
      join(dir, 'load.json'),
      JSON.stringify({
        date: '2026-01-02T00:00:00Z',
        machine: { ...machine, loadBefore: 0.5 },
        settings: { size: 128, steps: 8, perClient: 3 },
        rows: [
          { batching: 'on (bs4)', clients: 1, throughput: 2, p50: 0.5, p99: 0.6 },
          { batching: 'on (bs4)', clients: 4, throughput: 6, p50: 0.7, p99: 0.9 },
        ],
      }),
    );
    const written = await renderCharts(dir);
    expect(written.map((p) => p.slice(dir.length + 1)).sort()).toEqual([
      'charts/latency-per-mode.svg',
      'charts/throughput-vs-clients.svg',
    ]);
    const latency = readFileSync(join(dir, 'charts/latency-per-mode.svg'), 'utf8');
    expect(latency).toMatch(/^<svg/);
    for (const text of ['original', 'model-a', 'Generation latency per elastic mode', '128×128']) {
      expect(latency).toContain(text);
    }
    // A valid SVG document: an image decoder reads it.
    const meta = await sharp(Buffer.from(latency)).metadata();
    expect(meta.format).toBe('svg');
    expect(meta.width).toBeGreaterThan(200);
  });
});
