/**
 * The web page end to end: Debian's Chromium (headless, driven by playwright-core, no browser download) against
 * a real server on port 0 with the embedded model. Builds `web/dist` first when it is missing or stale.
 * Screenshots of each finished state go to `test/e2e/screenshots/`. The browser tests are skipped when
 * /usr/bin/chromium is absent; the HTTP checks of the static files always run.
 *
 * Page code is passed to the browser as strings: the test project compiles without the DOM library.
 */
import { copyFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BrowserContext, Page } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { ensureWebBuilt } from '../../web/build.ts';
import { CHROMIUM, HAS_CHROMIUM, launchChromium } from '../helpers/browser.ts';
import {
  GenerateImageDocument,
  type GenerateImageInput,
  GenerateWithLorasDocument,
  JobDocument,
  LoadLoraDocument,
  LoraJobDocument,
} from '../helpers/gql/graphql.ts';
import { FIXTURES_DIR } from '../helpers/paths.ts';
import { pattern } from '../helpers/pattern-image.ts';
import { disposeLeftovers, eventually, gqlData, startTestServer } from '../helpers/test-server.ts';

const SCREENSHOTS = fileURLToPath(new URL('./screenshots/', import.meta.url));
/** Long enough for a CPU generation on a slow machine; waits end on page state, never on elapsed time. */
const WAIT = { timeout: 110_000 };

if (!HAS_CHROMIUM) {
  console.warn(`[e2e] skipping the browser tests: ${CHROMIUM} is not installed (.ci/run installs Debian's chromium)`);
}

let url: string;

// One build check and one server for the whole file: the two groups run in order, never building concurrently.
beforeAll(async () => {
  ensureWebBuilt();
  ({ url } = await startTestServer());
});
afterAll(disposeLeftovers);

describe('serving the built page', () => {
  it('serves index.html at / for revalidation, with a CSP', async () => {
    const res = await fetch(`${url}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect(res.headers.get('content-security-policy')).toContain("default-src 'self'");
    const etag = res.headers.get('etag') ?? '';
    expect((await fetch(`${url}/`, { headers: { 'if-none-match': etag } })).status).toBe(304);
  });

  it('serves the hashed assets the page references as immutable, with their content types', async () => {
    const html = await (await fetch(`${url}/`)).text();
    const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1] as string);
    expect(assets.some((a) => a.endsWith('.js'))).toBe(true);
    expect(assets.some((a) => a.endsWith('.css'))).toBe(true);
    for (const asset of assets) {
      const res = await fetch(`${url}${asset}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(
        asset.endsWith('.js') ? 'text/javascript; charset=utf-8' : 'text/css; charset=utf-8',
      );
      expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
    }
  });

  it('answers 404 for unknown files and for paths escaping web/dist', async () => {
    for (const path of ['/assets/nope.js', '/..%2fpackage.json', '/%2e%2e/%2e%2e/package.json', '/%E0%A4%A']) {
      const res = await fetch(`${url}${path}`);
      expect([path, res.status]).toEqual([path, 404]);
    }
  });
});

describe.skipIf(!HAS_CHROMIUM)(`web page in headless Chromium (${CHROMIUM})`, () => {
  let browser: Awaited<ReturnType<typeof launchChromium>> | undefined;
  let context: BrowserContext;
  let page: Page;
  let pageErrors: string[];

  beforeAll(async () => {
    await mkdir(SCREENSHOTS, { recursive: true });
    browser = await launchChromium({ width: 1200, height: 900 });
    context = browser.context;
  });

  afterAll(async () => {
    await browser?.close();
  });

  /** A fresh tab on the page (of `at`, default the main server), once the modes have loaded. */
  async function openPage(at = url): Promise<Page> {
    page = await context.newPage();
    pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (msg.type() === 'error') pageErrors.push(msg.text());
    });
    await page.goto(at);
    await page.locator('body[data-ready="true"]').waitFor();
    return page;
  }

  afterEach(async () => {
    // Uncaught exceptions or console errors fail the test that caused them.
    expect(pageErrors).toEqual([]);
    await page?.close();
  });

  it('generates: mode with figures, custom size, progress to the last step, final image and download', async () => {
    // Small for speed, yet enough steps that the page follows some of them live.
    const [W, H, STEPS] = [192, 128, 12];
    const p = await openPage();
    // The mode options carry the published latency and the quality figure.
    const xl = p.locator('#mode option[value="XL"]');
    expect(await xl.textContent()).toMatch(/XL — [\d.]+ s on H100 \(FLUX\.1-dev, published\) — /);

    await p.getByLabel('Prompt').fill('a lighthouse on a cliff at dawn');
    await p.getByLabel('Mode').selectOption('XL');
    await p.getByLabel('Aspect ratio').selectOption('custom');
    await p.getByLabel('Width').fill(String(W));
    await p.getByLabel('Height').fill(String(H));
    await p.getByLabel('Steps').fill(String(STEPS));
    await p.getByLabel('Seed').fill('7');

    // Record what the status line showed, at every change, as "state|steps|eta".
    await p.evaluate(`(() => {
      window.__seen = [];
      const status = document.getElementById('progress-status');
      const section = document.getElementById('result');
      new MutationObserver(() => {
        window.__seen.push([section.dataset.state, document.getElementById('progress-steps').textContent,
          document.getElementById('progress-eta').textContent].join('|'));
      }).observe(status, { subtree: true, childList: true, characterData: true });
    })()`);
    await p.getByRole('button', { name: 'Generate' }).click();

    await p.locator('#result[data-state="succeeded"]').waitFor(WAIT);
    const seen = (await p.evaluate('window.__seen')) as string[];
    // A step event for the last step arrived while the job was running (not just the final "done" fill-in).
    expect(seen).toContain(`running|Step ${STEPS} of ${STEPS}.|`);
    // Steps before the last one came with an estimate of the time left.
    const eta = /^running\|Step (\d+) of \d+\.\|About [\d.]+ s left\.$/;
    expect(seen.some((line) => Number(eta.exec(line)?.[1]) < STEPS)).toBe(true);
    expect(
      await p.evaluate(`[document.getElementById('progress').value, document.getElementById('progress').max]`),
    ).toEqual([STEPS, STEPS]);
    expect(await p.locator('#progress-state').textContent()).toBe('Done.');

    // The final image loads with the requested size, and the download link points at it.
    await p.waitForFunction(
      `(() => { const i = document.getElementById('final'); return i.complete && i.naturalWidth > 0; })()`,
      undefined,
      WAIT,
    );
    const final = p.locator('#final');
    expect(
      await p.evaluate(
        `[document.getElementById('final').naturalWidth, document.getElementById('final').naturalHeight]`,
      ),
    ).toEqual([W, H]);
    const download = p.getByRole('link', { name: `Download image (${W}×${H} WEBP)` });
    expect(await download.getAttribute('href')).toBe(await final.getAttribute('src'));
    expect(await download.getAttribute('download')).toMatch(/^fluxql-.+\.webp$/);

    // The recent-jobs list shows it once the job has ended.
    await p.locator('#jobs-list li[data-status="SUCCEEDED"]').first().waitFor(WAIT);
    await p.screenshot({ path: join(SCREENSHOTS, 'generate-succeeded.png'), fullPage: true });
  });

  it('cancels a running job and shows the cancelled state', async () => {
    const p = await openPage();
    await p.getByLabel('Prompt').fill('a long job to cancel');
    // 1024x1024 (1:1) at 100 steps takes minutes on the CPU: the cancel always lands first.
    await p.getByLabel('Aspect ratio').selectOption('1:1');
    await p.getByLabel('Steps').fill('100');
    await p.getByRole('button', { name: 'Generate' }).click();

    const cancel = p.getByRole('button', { name: 'Cancel' });
    await cancel.click(WAIT); // waits for the button to become enabled (the job is queued)
    await p.locator('#result[data-state="canceled"]').waitFor(WAIT);
    expect(await p.locator('#progress-state').textContent()).toMatch(/^Cancelled/);
    expect(await cancel.isDisabled()).toBe(true);
    expect(await p.getByRole('button', { name: 'Generate' }).isEnabled()).toBe(true);
    await p.locator('#jobs-list li[data-status="CANCELED"]').first().waitFor(WAIT);
    await p.screenshot({ path: join(SCREENSHOTS, 'cancelled.png'), fullPage: true });
  });

  it('shows the server’s ValidationError next to the width field (keyboard submit)', async () => {
    const p = await openPage();
    await p.getByLabel('Aspect ratio').selectOption('custom');
    await p.getByLabel('Width').fill('100');
    await p.getByLabel('Height').fill('96');
    await p.getByLabel('Steps').fill('2');
    const prompt = p.getByLabel('Prompt');
    await prompt.fill('a size that is not a multiple of 16');
    await prompt.press('Control+Enter');

    const error = p.locator('#width-error');
    await error.filter({ hasText: /\S/ }).waitFor(WAIT);
    expect(await error.textContent()).toBe('width must be a multiple of 16');
    expect(await p.getByLabel('Width').getAttribute('aria-invalid')).toBe('true');
    // The invalid field takes the focus, and no job was started.
    expect(await p.evaluate('document.activeElement.id')).toBe('width');
    expect(await p.locator('#result').getAttribute('data-state')).toBeNull();
    await p.screenshot({ path: join(SCREENSHOTS, 'validation-error.png'), fullPage: true });
  });
  it('edits an uploaded image (img2img): strength, generate, the same image as the API edit, unlike text-to-image', async () => {
    const [W, H, STEPS, SEED] = [64, 64, 8, 5];
    const dir = await mkdtemp(join(tmpdir(), 'fluxql-e2e-edit-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const png = await pattern(W, H, 0.5);
    const file = join(dir, 'input.png');
    await writeFile(file, png);

    const p = await openPage();
    await p.getByLabel('Prompt').fill('a watercolor of the same scene');
    await p.getByLabel('Aspect ratio').selectOption('custom');
    await p.getByLabel('Width').fill(String(W));
    await p.getByLabel('Height').fill(String(H));
    await p.getByLabel('Steps').fill(String(STEPS));
    await p.getByLabel('Seed').fill(String(SEED));
    await p.getByLabel('Input image').setInputFiles(file);
    // The slider starts at the API's default strength; moving it updates the number beside it.
    expect(await p.getByLabel('Strength').inputValue()).toBe('0.6');
    await p.evaluate(`(() => {
      const s = document.getElementById('strength');
      s.value = '0.5';
      s.dispatchEvent(new Event('input', { bubbles: true }));
    })()`);
    expect(await p.locator('#strength-value').textContent()).toBe('0.5');
    await p.getByRole('button', { name: 'Generate' }).click();
    await p.locator('#result[data-state="succeeded"]').waitFor(WAIT);
    await p.waitForFunction(
      `(() => { const i = document.getElementById('final'); return i.complete && i.naturalWidth > 0; })()`,
      undefined,
      WAIT,
    );
    await p.screenshot({ path: join(SCREENSHOTS, 'edit-succeeded.png'), fullPage: true });

    // The server ran an edit: strength 0.5 of 8 steps runs the last 4 (the progress bar counted those).
    const jobId = /^fluxql-(.+)\.\w+$/.exec((await p.locator('#download').getAttribute('download')) ?? '')?.[1] ?? '';
    const { job } = await gqlData(url, JobDocument, { id: jobId });
    if (job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(job));
    expect([job.data.status, job.data.totalSteps]).toEqual(['SUCCEEDED', STEPS / 2]);
    expect(await p.evaluate(`document.getElementById('progress').max`)).toBe(STEPS / 2);

    // The same edit over the API gives the same pixels; text-to-image with the same seed does not.
    const rgb = async (imageUrl: string) =>
      sharp(Buffer.from(await (await fetch(new URL(imageUrl, url))).arrayBuffer()))
        .raw()
        .toBuffer();
    const viaApi = async (extra: Partial<GenerateImageInput>) => {
      const input = {
        prompt: 'a watercolor of the same scene',
        width: W,
        height: H,
        steps: STEPS,
        seed: SEED,
        ...extra,
      };
      const { generateImage: r } = await gqlData(url, GenerateImageDocument, { input });
      if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(JSON.stringify(r));
      const done = await eventually(async () => {
        const { job: j } = await gqlData(url, JobDocument, { id: r.data.jobId });
        if (j.__typename !== 'QueryJobSuccess' || j.data.status !== 'SUCCEEDED') throw new Error('not yet');
        return j.data;
      });
      return rgb(done.images[0]?.url ?? '');
    };
    const pageImage = await rgb((await p.locator('#final').getAttribute('src')) ?? '');
    const edited = await viaApi({ image: `data:image/png;base64,${png.toString('base64')}`, strength: 0.5 });
    expect(pageImage.equals(edited)).toBe(true);
    expect(pageImage.equals(await viaApi({}))).toBe(false);
  });

  it('shows the server’s ValidationError next to the mask field (a mask without an image)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fluxql-e2e-mask-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'mask.png');
    await writeFile(file, await pattern(64, 64, 0));
    const p = await openPage();
    await p.getByLabel('Prompt').fill('a mask alone');
    await p.getByLabel('Mask (inpainting)').setInputFiles(file);
    await p.getByRole('button', { name: 'Generate' }).click();
    const error = p.locator('#mask-error');
    await error.filter({ hasText: /\S/ }).waitFor(WAIT);
    expect(await p.getByLabel('Mask (inpainting)').getAttribute('aria-invalid')).toBe('true');
    expect(await p.locator('#result').getAttribute('data-state')).toBeNull();
  });

  describe('LoRA selector (server with LORA_DIR)', () => {
    let loraUrl: string;
    let loraDir: string;

    beforeAll(async () => {
      loraDir = await mkdtemp(join(tmpdir(), 'fluxql-e2e-loras-'));
      for (const name of ['lora_0_diffusers', 'lora_1_xlabs']) {
        copyFileSync(join(FIXTURES_DIR, `${name}.safetensors`), join(loraDir, `${name}.safetensors`));
      }
      ({ url: loraUrl } = await startTestServer({ loraDir }));
    });
    afterAll(async () => {
      if (loraDir) await rm(loraDir, { recursive: true, force: true });
    });

    it('picks a LoRA with a strength and generates the same image as the API with that set', async () => {
      const p = await openPage(loraUrl);
      const fieldset = p.locator('#lora-fieldset');
      expect(await fieldset.isVisible()).toBe(true);
      const row = p.locator('#lora-list .lora-row[data-lora="lora_1_xlabs.safetensors"]');
      expect(await row.locator('label').first().textContent()).toBe('lora_1_xlabs.safetensors (xlabs, rank 8, 57 KiB)');

      await p.getByLabel('Prompt').fill('a paper boat on a pond');
      await p.getByLabel('Aspect ratio').selectOption('custom');
      await p.getByLabel('Width').fill('64');
      await p.getByLabel('Height').fill('64');
      await p.getByLabel('Steps').fill('3');
      await p.getByLabel('Seed').fill('21');
      await row.getByRole('checkbox').check();
      await row.getByRole('spinbutton').fill('0.6');
      await p.getByRole('button', { name: 'Generate' }).click();
      await p.locator('#result[data-state="succeeded"]').waitFor(WAIT);
      await p.screenshot({ path: join(SCREENSHOTS, 'lora-succeeded.png'), fullPage: true });

      // The job ran with exactly the chosen set; the same request over the API gives the same pixels.
      const item = p.locator('#jobs-list li[data-status="SUCCEEDED"]').first();
      await item.waitFor(WAIT);
      const jobId = (await item.getAttribute('data-job-id')) ?? '';
      const { job } = await gqlData(loraUrl, LoraJobDocument, { id: jobId });
      if (job.__typename !== 'QueryJobSuccess') throw new Error(JSON.stringify(job));
      expect(job.data.loras).toEqual([{ name: 'lora_1_xlabs.safetensors', strength: 0.6 }]);
      const { prompt, seed, width, height, steps, guidanceScale } = job.data;
      const { generateImage: r } = await gqlData(loraUrl, GenerateWithLorasDocument, {
        input: { prompt, seed, width, height, steps, guidanceScale, loras: job.data.loras },
      });
      if (r.__typename !== 'MutationGenerateImageSuccess') throw new Error(JSON.stringify(r));
      const apiJob = await eventually(async () => {
        const { job: j } = await gqlData(loraUrl, LoraJobDocument, { id: r.data.jobId });
        if (j.__typename !== 'QueryJobSuccess' || j.data.status !== 'SUCCEEDED') throw new Error('not yet');
        return j.data;
      });
      const rgb = async (imageUrl: string) =>
        sharp(Buffer.from(await (await fetch(imageUrl)).arrayBuffer()))
          .raw()
          .toBuffer();
      const pageImage = await rgb(new URL((await p.locator('#final').getAttribute('src')) ?? '', loraUrl).href);
      expect(pageImage.equals(await rgb(apiJob.images[0]?.url ?? ''))).toBe(true);
    });

    it('starts with the server-wide default set checked at its strength', async () => {
      const loaded = (await gqlData(loraUrl, LoadLoraDocument, { name: 'lora_0_diffusers', strength: 0.7 })).loadLora;
      expect(loaded.__typename).toBe('MutationLoadLoraSuccess');
      const p = await openPage(loraUrl);
      const row = p.locator('#lora-list .lora-row[data-lora="lora_0_diffusers.safetensors"]');
      expect(await row.getByRole('checkbox').isChecked()).toBe(true);
      expect(await row.getByRole('spinbutton').inputValue()).toBe('0.7');
      const other = p.locator('#lora-list .lora-row[data-lora="lora_1_xlabs.safetensors"]');
      expect(await other.getByRole('checkbox').isChecked()).toBe(false);
    });
  });
});
