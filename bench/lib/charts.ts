/**
 * @file Benchmark charts: Vega-Lite specs compiled with `vega-lite` and rendered to SVG by `vega` in Node (no
 * browser, no canvas: text widths are estimated). Each chart reads a results file as the benchmark wrote it, so
 * `bench:charts` re-renders every chart from `bench/results/*.json` without running anything again.
 *
 * - latency per mode (`latency.json`): mean generation latency with ±1 std, one panel per model (models differ by
 *   orders of magnitude, so each panel has its own y scale);
 * - quality vs latency (`quality.json`): PSNR against `original` over mean latency, one labelled point per mode;
 * - throughput vs clients (`load.json`): images per second over concurrent clients, batching on and off;
 * - throughput vs workers (`scale-out.json`): jobs per minute over worker processes.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

/** Where charts go. */
export const CHARTS_DIR = 'bench/results/charts';

const FONT = { font: 'sans-serif', labelFont: 'sans-serif', titleFont: 'sans-serif' };
const CONFIG = {
  axis: FONT,
  legend: FONT,
  header: FONT,
  title: { font: 'sans-serif', fontSize: 15 },
  view: { stroke: '#ccc' },
};

/** Renders a Vega-Lite spec to an SVG document. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile({ ...spec, config: { ...CONFIG, ...spec.config } } as TopLevelSpec).spec), {
    renderer: 'none',
  });
  try {
    return `${await view.toSVG()}\n`;
  } finally {
    view.finalize();
  }
}

interface LatencyFile {
  date: string;
  machine: { cpu: string; cores: number };
  settings: { size: number; steps: number };
  results: { model: string; rows: { mode: string; meanMs: number; stdMs: number; medianMs: number }[] }[];
}

/** Mean latency per mode (bars) with ±1 std (rules), one panel per model. */
export function latencyPerModeSpec(file: LatencyFile): TopLevelSpec {
  const values = file.results.flatMap((r) =>
    r.rows.map((x) => ({
      model: r.model,
      mode: x.mode,
      mean: x.meanMs,
      lo: x.meanMs - x.stdMs,
      hi: x.meanMs + x.stdMs,
    })),
  );
  const order = file.results[0]?.rows.map((x) => x.mode) ?? [];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'Generation latency per elastic mode',
      subtitle: `${file.settings.size}×${file.settings.size}, ${file.settings.steps} steps, batch 1; ${file.machine.cpu}, ${file.machine.cores} cores; ${file.date.slice(0, 10)}`,
    },
    data: { values },
    facet: { column: { field: 'model', type: 'nominal', title: null } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 260,
      height: 220,
      layer: [
        {
          mark: { type: 'bar', color: '#4c78a8' },
          encoding: {
            x: { field: 'mode', type: 'nominal', sort: order, title: 'mode', axis: { labelAngle: 0 } },
            y: { field: 'mean', type: 'quantitative', title: 'mean latency (ms)' },
            tooltip: [{ field: 'mean', format: '.1f' }],
          },
        },
        {
          mark: { type: 'rule', color: 'black' },
          encoding: {
            x: { field: 'mode', type: 'nominal', sort: order },
            y: { field: 'lo', type: 'quantitative' },
            y2: { field: 'hi' },
          },
        },
        {
          mark: { type: 'text', dy: -8, fontSize: 10 },
          encoding: {
            x: { field: 'mode', type: 'nominal', sort: order },
            y: { field: 'hi', type: 'quantitative' },
            text: { field: 'mean', type: 'quantitative', format: '.0f' },
          },
        },
      ],
    },
  };
}

interface QualityFile {
  date: string;
  settings: { size: number; steps: number };
  results: { model: string; prompts: number; rows: { mode: string; psnr: number; ssim: number; meanMs: number }[] }[];
}

/** PSNR against `original` over mean latency, one labelled point per mode, one panel per model. */
export function qualityVsLatencySpec(file: QualityFile): TopLevelSpec {
  const values = file.results.flatMap((r) =>
    r.rows.map((x) => ({
      model: `${r.model} (${r.prompts} prompts)`,
      mode: x.mode,
      psnr: x.psnr,
      ssim: x.ssim,
      ms: x.meanMs,
    })),
  );
  const encoding = {
    x: { field: 'ms', type: 'quantitative', title: 'mean latency per image (ms)', scale: { zero: false } },
    y: { field: 'psnr', type: 'quantitative', title: 'PSNR vs original (dB, capped at 100)', scale: { zero: false } },
  } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'Elastic modes: quality against latency',
      subtitle: `${file.settings.size}×${file.settings.size}, ${file.settings.steps} steps; ${file.date.slice(0, 10)}`,
    },
    data: { values },
    facet: { column: { field: 'model', type: 'nominal', title: null } },
    resolve: { scale: { x: 'independent', y: 'independent' } },
    spec: {
      width: 280,
      height: 240,
      layer: [
        { mark: { type: 'point', filled: true, size: 70, color: '#e45756' }, encoding },
        { mark: { type: 'text', dx: 8, dy: -8, align: 'left' }, encoding: { ...encoding, text: { field: 'mode' } } },
      ],
    },
  };
}

interface LoadFile {
  date: string;
  settings: { size: number; steps: number; perClient: number };
  machine: { cpu: string; cores: number; loadBefore?: number };
  rows: { batching: string; clients: number; throughput: number; p50: number; p99: number }[];
}

/** Images per second (and p50 latency) over concurrent clients, batching on and off. */
export function throughputVsClientsSpec(file: LoadFile): TopLevelSpec {
  const x = {
    field: 'clients',
    type: 'quantitative',
    title: 'concurrent clients',
    scale: { type: 'log', base: 2 },
    axis: { values: [...new Set(file.rows.map((r) => r.clients))] },
  } as const;
  const color = { field: 'batching', type: 'nominal', title: 'batching' } as const;
  const panel = (field: string, title: string) => ({
    width: 300,
    height: 220,
    layer: [{ mark: { type: 'line', point: true }, encoding: { x, y: { field, type: 'quantitative', title }, color } }],
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'REST throughput and latency against concurrent clients',
      subtitle: `${file.settings.size}×${file.settings.size}, ${file.settings.steps} steps, ${file.settings.perClient} requests per client; ${file.machine.cpu}, ${file.machine.cores} cores${file.machine.loadBefore === undefined ? '' : `, load average ${file.machine.loadBefore} at start`}; ${file.date.slice(0, 10)}`,
    },
    data: { values: file.rows },
    hconcat: [panel('throughput', 'images per second'), panel('p50', 'p50 latency (s)')],
  } as TopLevelSpec;
}

interface ScaleOutFile {
  date: string;
  machine: { cpus: number; cpuModel: string };
  settings: { size: string; steps: number; modelBatch: number };
  rows: { workers: number; jobsPerMinute: number; p50Seconds: number }[];
}

/** Jobs per minute over worker processes (scale-out benchmark). */
export function throughputVsWorkersSpec(file: ScaleOutFile): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'Scale-out throughput against engine workers',
      subtitle: `${file.settings.size}, ${file.settings.steps} steps, MODEL_BATCH=${file.settings.modelBatch}; ${file.machine.cpuModel}, ${file.machine.cpus} cores; ${file.date.slice(0, 10)}`,
    },
    data: { values: file.rows },
    width: 320,
    height: 220,
    mark: { type: 'line', point: true },
    encoding: {
      x: {
        field: 'workers',
        type: 'quantitative',
        title: 'worker processes',
        axis: { values: file.rows.map((r) => r.workers) },
      },
      y: { field: 'jobsPerMinute', type: 'quantitative', title: 'jobs per minute', scale: { zero: true } },
    },
  };
}

/** Chart name → the results file it reads and its spec builder. */
const CHARTS: { name: string; file: string; spec: (data: never) => TopLevelSpec }[] = [
  { name: 'latency-per-mode', file: 'latency.json', spec: latencyPerModeSpec },
  { name: 'quality-vs-latency', file: 'quality.json', spec: qualityVsLatencySpec },
  { name: 'throughput-vs-clients', file: 'load.json', spec: throughputVsClientsSpec },
  { name: 'throughput-vs-workers', file: 'scale-out.json', spec: throughputVsWorkersSpec },
];

/**
 * Renders the charts whose results file exists in `resultsDir` (all of them, or only those reading `onlyFile`) into
 * `<resultsDir>/charts/<name>.svg`; returns the paths written.
 */
export async function renderCharts(resultsDir: string, onlyFile?: string): Promise<string[]> {
  const outDir = join(resultsDir, 'charts');
  mkdirSync(outDir, { recursive: true });
  const written: string[] = [];
  for (const c of CHARTS) {
    if (onlyFile && c.file !== onlyFile) continue;
    const path = join(resultsDir, c.file);
    if (!existsSync(path)) continue;
    const svg = await renderSvg(c.spec(JSON.parse(readFileSync(path, 'utf8')) as never));
    const out = join(outDir, `${c.name}.svg`);
    writeFileSync(out, svg);
    written.push(out);
  }
  return written;
}
