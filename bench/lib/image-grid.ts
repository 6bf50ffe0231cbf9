/**
 * @file A labelled image grid (one row per label, same columns in every row) as a PNG, composited with sharp:
 * the quality benchmark's "same prompts and seeds in every mode" picture.
 */
import sharp, { type OverlayOptions } from 'sharp';

/** An 8-bit RGB image `[H, W, 3]` (the pipeline's `RgbImage`). */
export interface GridImage {
  width: number;
  height: number;
  data: Uint8Array;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Optional decorations of {@link imageGridPng}: a title line and one header per column above the tiles. */
export interface GridHeaders {
  title?: string;
  columns?: readonly string[];
  /** Font size of the row labels. @default 18 */
  labelSize?: number;
}

const HEADER_H = 28;

/**
 * Renders rows of images, each scaled to `tile` x `tile`, with the row label in a left margin and, when given, a
 * title and column headers above.
 * @returns PNG bytes.
 */
export async function imageGridPng(
  rows: { label: string; images: GridImage[] }[],
  tile: number,
  labelWidth = 110,
  headers: GridHeaders = {},
): Promise<Buffer> {
  const cols = Math.max(...rows.map((r) => r.images.length));
  const gap = 2;
  const headerLines = (headers.title ? 1 : 0) + (headers.columns ? 1 : 0);
  const top0 = headerLines * HEADER_H;
  const width = labelWidth + cols * (tile + gap);
  const height = top0 + rows.length * (tile + gap);
  const layers: OverlayOptions[] = [];
  if (headerLines > 0) {
    const texts = [
      ...(headers.title ? [`<text x="8" y="20" font-size="15" font-weight="bold">${esc(headers.title)}</text>`] : []),
      ...(headers.columns ?? []).map(
        (name, c) =>
          `<text x="${labelWidth + c * (tile + gap) + tile / 2}" y="${top0 - 8}" text-anchor="middle" font-size="14">${esc(name)}</text>`,
      ),
    ];
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${top0}" font-family="sans-serif">${texts.join('')}</svg>`;
    layers.push({ input: Buffer.from(svg), left: 0, top: 0 });
  }
  for (const [r, row] of rows.entries()) {
    const top = top0 + r * (tile + gap);
    const label =
      `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth}" height="${tile}">` +
      `<text x="8" y="${tile / 2 + 6}" font-family="sans-serif" font-size="${headers.labelSize ?? 18}">${esc(row.label)}</text></svg>`;
    layers.push({ input: Buffer.from(label), left: 0, top });
    for (const [c, img] of row.images.entries()) {
      const input = await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
        raw: { width: img.width, height: img.height, channels: 3 },
      })
        .resize(tile, tile, { kernel: 'lanczos3' })
        .png()
        .toBuffer();
      layers.push({ input, left: labelWidth + c * (tile + gap), top });
    }
  }
  return sharp({ create: { width, height, channels: 3, background: { r: 255, g: 255, b: 255 } } })
    .composite(layers)
    .png()
    .toBuffer();
}
