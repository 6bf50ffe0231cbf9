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

/**
 * Renders rows of images, each scaled to `tile` x `tile`, with the row label in a left margin.
 * @returns PNG bytes.
 */
export async function imageGridPng(
  rows: { label: string; images: GridImage[] }[],
  tile: number,
  labelWidth = 110,
): Promise<Buffer> {
  const cols = Math.max(...rows.map((r) => r.images.length));
  const gap = 2;
  const width = labelWidth + cols * (tile + gap);
  const height = rows.length * (tile + gap);
  const layers: OverlayOptions[] = [];
  for (const [r, row] of rows.entries()) {
    const top = r * (tile + gap);
    const label =
      `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth}" height="${tile}">` +
      `<text x="8" y="${tile / 2 + 6}" font-family="sans-serif" font-size="18">${esc(row.label)}</text></svg>`;
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
