/**
 * @file A dependency-free SVG scatter plot for the quality benchmark: latency (x) against quality (y), one labelled
 * point per mode, one colour per model.
 */

/** One labelled point. */
export interface PlotPoint {
  label: string;
  x: number;
  y: number;
}

/** One model's points. */
export interface PlotSeries {
  name: string;
  points: PlotPoint[];
}

const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Nice tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || Math.abs(hi) || 1;
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(10)));
  return out;
}

/**
 * Renders the series as an SVG document. Each series gets its own x range (models differ by orders of magnitude in
 * latency): x is the latency relative to that series' largest value, so the axis reads "fraction of original".
 */
export function scatterSvg(title: string, xLabel: string, yLabel: string, series: PlotSeries[]): string {
  const W = 720;
  const H = 460;
  const m = { l: 70, r: 170, t: 40, b: 60 };
  const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter(Number.isFinite);
  const yLo = Math.floor(Math.min(...ys) - 2);
  const yHi = Math.ceil(Math.max(...ys) + 2);
  const px = (x: number) => m.l + x * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((y - yLo) / (yHi - yLo || 1)) * (H - m.t - m.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - m.r / 2}" y="22" text-anchor="middle" font-size="15">${esc(title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
  ];
  for (const t of ticks(0, 1)) {
    parts.push(`<line x1="${px(t)}" y1="${H - m.b}" x2="${px(t)}" y2="${H - m.b + 5}" stroke="black"/>`);
    parts.push(`<text x="${px(t)}" y="${H - m.b + 18}" text-anchor="middle">${t}</text>`);
  }
  for (const t of ticks(yLo, yHi)) {
    parts.push(`<line x1="${m.l - 5}" y1="${py(t)}" x2="${W - m.r}" y2="${py(t)}" stroke="#ddd"/>`);
    parts.push(`<text x="${m.l - 8}" y="${py(t) + 4}" text-anchor="end">${t}</text>`);
  }
  parts.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 18}" text-anchor="middle">${esc(xLabel)}</text>`);
  parts.push(
    `<text x="18" y="${(m.t + H - m.b) / 2}" text-anchor="middle" transform="rotate(-90 18 ${(m.t + H - m.b) / 2})">${esc(yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length]!;
    const xMax = Math.max(...s.points.map((p) => p.x));
    for (const p of s.points) {
      const y = Number.isFinite(p.y) ? p.y : yHi;
      const cx = px(p.x / xMax);
      parts.push(`<circle cx="${cx}" cy="${py(y)}" r="5" fill="${colour}"/>`);
      parts.push(`<text x="${cx + 7}" y="${py(y) - 7}" fill="${colour}">${esc(p.label)}</text>`);
    }
    parts.push(`<circle cx="${W - m.r + 20}" cy="${m.t + 20 * i}" r="5" fill="${colour}"/>`);
    parts.push(`<text x="${W - m.r + 30}" y="${m.t + 4 + 20 * i}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
