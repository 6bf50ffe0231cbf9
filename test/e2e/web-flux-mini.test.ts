/**
 * The web page on flux-mini (issue 14): the README's example prompt typed into the page on a real server serving the
 * installed flux-mini at the page's default (native) size, and the image the page shows judged by the deterministic
 * detector: background color, object color and shape as the prompt asks. Skipped without flux-mini (a GPU run
 * installs it: tools/train-mini/install-parts.sh) or without Debian's Chromium.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { FLUX_MINI_DIR, HAS_FLUX_MINI } from '../../src/config.ts';
import { detect, judgeDetection } from '../../src/shared/caption-grammar/detector.ts';
import { parseCaption } from '../../src/shared/caption-grammar/grammar.ts';
import { ensureWebBuilt } from '../../web/build.ts';
import { HAS_CHROMIUM, launchChromium } from '../helpers/browser.ts';
import { REPO_ROOT } from '../helpers/paths.ts';
import { disposeLeftovers, startTestServer } from '../helpers/test-server.ts';

/** The README's example prompt: "draws what a prompt like `...` asks". */
const EXAMPLE = /draws what a prompt like `([^`]+)` asks/.exec(readFileSync(join(REPO_ROOT, 'README.md'), 'utf8'))?.[1];

afterAll(disposeLeftovers);

describe.skipIf(!HAS_FLUX_MINI || !HAS_CHROMIUM)('the web page on flux-mini', () => {
  it("shows a recognisable image for the README's example prompt", { timeout: 180_000 }, async () => {
    const asked = EXAMPLE ? parseCaption(EXAMPLE) : null;
    expect(asked, `README example ${JSON.stringify(EXAMPLE)} is a grammar caption`).not.toBeNull();
    ensureWebBuilt();
    const { url } = await startTestServer({ modelRepo: FLUX_MINI_DIR });
    const browser = await launchChromium({ width: 1200, height: 900 });
    try {
      const page: Page = await browser.context.newPage();
      await page.goto(url);
      await page.locator('body[data-ready="true"]').waitFor();
      await page.getByLabel('Prompt').fill(EXAMPLE as string);
      await page.getByLabel('Seed').fill('3');
      await page.getByRole('button', { name: 'Generate' }).click();
      await page.locator('#result[data-state="succeeded"]').waitFor({ timeout: 150_000 });
      const src = await page.locator('#final').getAttribute('src');
      const bytes = Buffer.from(await (await page.request.get(new URL(src as string, url).href)).body());
      const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      // The page's default size for flux-mini is its native one.
      expect([info.width, info.height]).toEqual([256, 256]);
      const d = detect({ width: info.width, height: info.height, data: new Uint8Array(data) });
      const judged = judgeDetection(d, asked!);
      expect({ background: judged.background, color: judged.color, shape: judged.shape }, JSON.stringify(d)).toEqual({
        background: true,
        color: true,
        shape: true,
      });
    } finally {
      await browser.close();
    }
  });
});
