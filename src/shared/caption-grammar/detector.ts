/**
 * @file Deterministic judge of an image drawn for a grammar caption (issue 14): background color, object color,
 * shape, position and size. The rules are tools/train-mini/detector.py's, step for step, so the TS benchmark and
 * the training side's evaluation agree:
 *
 * - background: nearest palette color to the per-channel median of the border pixels (a band of side/32 pixels);
 * - object: pixels farther than 40 (Euclidean, 0-255 RGB) from that median; its color is the nearest palette color
 *   (other than the background's) to their median; fewer than 1 % of the pixels means no object;
 * - shape: fill ratio of the object's bounding box (0.5th-99.5th percentile of its pixel rows and columns, so stray
 *   pixels do not stretch it): above 0.9 square, below 0.64 triangle, else circle (pi/4 ~ 0.785), except that a box
 *   whose top quarter is under 0.6 times as full as its bottom quarter is a triangle (upright);
 * - position: the box centre within 0.1 of the image centre on both axes is `center`, else its quadrant;
 * - size: the box's larger side over the image side, `small` below 0.45, else `large`.
 */
import {
  type CaptionAttributes,
  COLOR_NAMES,
  COLORS,
  type ColorName,
  type PositionName,
  type ShapeName,
  type SizeName,
} from './grammar.ts';

/** An 8-bit RGB image, `[H, W, 3]` row-major (the pipeline's `RgbImage`). */
export interface DetectorImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** What the detector sees; everything but `background` is null when it finds no object. */
export interface Detection {
  background: ColorName;
  color: ColorName | null;
  shape: ShapeName | null;
  position: PositionName | null;
  size: SizeName | null;
  /** Fraction of the bounding box the object fills. */
  fill: number | null;
  /** Larger bounding-box side over the image side. */
  side: number | null;
}

/** Per attribute: right or wrong; null for position/size when the caption does not ask for one. */
export interface Judgement {
  background: boolean;
  color: boolean;
  shape: boolean;
  position: boolean | null;
  size: boolean | null;
}

export const ATTRIBUTES = ['background', 'color', 'shape', 'position', 'size'] as const;
export type Attribute = (typeof ATTRIBUTES)[number];

const PALETTE = COLOR_NAMES.map((n) => COLORS[n]);
const OBJECT_DISTANCE = 40;

function nearestColor(rgb: readonly number[], exclude?: ColorName): ColorName {
  let best = -1;
  let bestD = Number.POSITIVE_INFINITY;
  PALETTE.forEach((p, i) => {
    if (COLOR_NAMES[i] === exclude) return;
    const d = (p[0] - rgb[0]!) ** 2 + (p[1] - rgb[1]!) ** 2 + (p[2] - rgb[2]!) ** 2;
    if (d < bestD) {
      bestD = d;
      best = i;
    }
  });
  return COLOR_NAMES[best]!;
}

/** numpy's median of an unsorted array (mean of the middle two for an even count); sorts `xs` in place. */
function median(xs: Float64Array): number {
  xs.sort();
  const m = xs.length >> 1;
  return xs.length % 2 ? xs[m]! : (xs[m - 1]! + xs[m]!) / 2;
}

/** numpy's default (linear) percentile of a sorted array. */
function percentile(sorted: Int32Array, q: number): number {
  const pos = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo]! + (pos - lo) * (sorted[hi]! - sorted[lo]!);
}

/** Per-channel median of the pixels at `indices` (pixel indices into `[H, W]`). */
function channelMedian(data: Uint8Array, indices: ArrayLike<number>): number[] {
  const v = new Float64Array(indices.length);
  return [0, 1, 2].map((c) => {
    for (let i = 0; i < indices.length; i++) v[i] = data[indices[i]! * 3 + c]!;
    return median(v);
  });
}

/** Runs the detector on one image. */
export function detect(img: DetectorImage): Detection {
  const { width: w, height: h, data } = img;
  if (data.length !== w * h * 3) throw new Error(`detect: expected ${w * h * 3} bytes for ${w}x${h} RGB`);
  const b = Math.max(1, Math.floor(Math.min(h, w) / 32));
  // Border band, as detector.py concatenates it (corners counted twice: top, bottom, left, right strips).
  const border: number[] = [];
  for (let y = 0; y < b; y++) for (let x = 0; x < w; x++) border.push(y * w + x);
  for (let y = h - b; y < h; y++) for (let x = 0; x < w; x++) border.push(y * w + x);
  for (let y = 0; y < h; y++) for (let x = 0; x < b; x++) border.push(y * w + x);
  for (let y = 0; y < h; y++) for (let x = w - b; x < w; x++) border.push(y * w + x);
  const bgRgb = channelMedian(data, border);
  const background = nearestColor(bgRgb);
  const out: Detection = { background, color: null, shape: null, position: null, size: null, fill: null, side: null };

  const mask = new Uint8Array(w * h);
  const objectPixels: number[] = [];
  for (let p = 0; p < w * h; p++) {
    const dr = data[p * 3]! - bgRgb[0]!;
    const dg = data[p * 3 + 1]! - bgRgb[1]!;
    const db = data[p * 3 + 2]! - bgRgb[2]!;
    if (dr * dr + dg * dg + db * db > OBJECT_DISTANCE * OBJECT_DISTANCE) {
      mask[p] = 1;
      objectPixels.push(p);
    }
  }
  if (objectPixels.length < 0.01 * h * w) return out;
  out.color = nearestColor(channelMedian(data, objectPixels), background);

  const ys = Int32Array.from(objectPixels, (p) => Math.floor(p / w)); // already ascending (row-major scan)
  const xs = Int32Array.from(objectPixels, (p) => p % w).sort();
  const y0 = percentile(ys, 0.5);
  const y1 = percentile(ys, 99.5);
  const x0 = percentile(xs, 0.5);
  const x1 = percentile(xs, 99.5);
  const bw = Math.max(x1 - x0 + 1, 1);
  const bh = Math.max(y1 - y0 + 1, 1);
  // The box slice mask[int(y0):int(y1)+1, int(x0):int(x1)+1]; fill per row kept for the top/bottom quarters.
  const r0 = Math.trunc(y0);
  const r1 = Math.trunc(y1) + 1;
  const c0 = Math.trunc(x0);
  const c1 = Math.trunc(x1) + 1;
  const rowFill: number[] = [];
  for (let y = r0; y < r1; y++) {
    let s = 0;
    for (let x = c0; x < c1; x++) s += mask[y * w + x]!;
    rowFill.push(s);
  }
  const cols = c1 - c0;
  const sum = (rows: number[]) => rows.reduce((a, v) => a + v, 0);
  const fill = sum(rowFill) / (rowFill.length * cols);
  const q = Math.max(1, Math.floor(rowFill.length / 4));
  const top = sum(rowFill.slice(0, q)) / (q * cols);
  const bottom = sum(rowFill.slice(-q)) / (q * cols);
  out.fill = fill;
  out.shape = fill > 0.9 ? 'square' : fill < 0.64 || top < 0.6 * bottom ? 'triangle' : 'circle';
  const cx = (x0 + x1 + 1) / 2 / w;
  const cy = (y0 + y1 + 1) / 2 / h;
  out.position =
    Math.abs(cx - 0.5) < 0.1 && Math.abs(cy - 0.5) < 0.1
      ? 'center'
      : (`${cy < 0.5 ? 'top' : 'bottom'} ${cx < 0.5 ? 'left' : 'right'}` as PositionName);
  const side = Math.max(bw / w, bh / h);
  out.side = side;
  out.size = side < 0.45 ? 'small' : 'large';
  return out;
}

/** Judges `img` against what its caption asked for. */
export function judge(img: DetectorImage, asked: CaptionAttributes): Judgement {
  return judgeDetection(detect(img), asked);
}

/** Compares a detection with what the caption asked for. */
export function judgeDetection(d: Detection, asked: CaptionAttributes): Judgement {
  return {
    background: d.background === asked.background,
    color: d.color === asked.color,
    shape: d.shape === asked.shape,
    position: asked.position === null ? null : d.position === asked.position,
    size: asked.size === null ? null : d.size === asked.size,
  };
}

/** Accuracy per attribute over judgements (attributes never asked are left out), with the counts. */
export function accuracy(
  judgements: readonly Judgement[],
): Partial<Record<Attribute, { right: number; asked: number; accuracy: number }>> {
  const out: Partial<Record<Attribute, { right: number; asked: number; accuracy: number }>> = {};
  for (const a of ATTRIBUTES) {
    const asked = judgements.filter((j) => j[a] !== null);
    if (asked.length === 0) continue;
    const right = asked.filter((j) => j[a] === true).length;
    out[a] = { right, asked: asked.length, accuracy: right / asked.length };
  }
  return out;
}
