/** @file Test images: a smooth deterministic pattern, as raw RGB pixels or a PNG (control images, edit inputs). */
import sharp from 'sharp';

/** `width`x`height` RGB pixels (`[h, w, 3]`) of sine stripes; `phase` shifts them, so two phases differ. */
export function patternPixels(
  width: number,
  height: number,
  phase: number,
): { width: number; height: number; data: Uint8Array } {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        data[(y * width + x) * 3 + c] = Math.round(127.5 + 127.5 * Math.sin(0.3 * x + 0.2 * y + 2 * c + phase));
      }
    }
  }
  return { width, height, data };
}

/** The same pattern as a PNG. */
export function pattern(width: number, height: number, phase: number): Promise<Buffer> {
  const { data } = patternPixels(width, height, phase);
  return sharp(data, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}
