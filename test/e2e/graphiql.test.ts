/**
 * GraphiQL works with no network: Debian's Chromium (headless, playwright-core) opens `/graphql` on a real server,
 * GraphiQL renders its editor and runs a query, and every request the page makes goes to the local server (or to
 * the page's own blob:/data: URLs, which is how its editor workers load). Requests elsewhere are recorded and
 * aborted, as they would fail offline. Skipped when /usr/bin/chromium is absent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HAS_CHROMIUM, launchChromium } from '../helpers/browser.ts';
import { disposeLeftovers, startTestServer } from '../helpers/test-server.ts';

const WAIT = { timeout: 60_000 };

let url: string;
let browser: Awaited<ReturnType<typeof launchChromium>> | undefined;

beforeAll(async () => {
  ({ url } = await startTestServer());
});
afterAll(async () => {
  await browser?.close();
  await disposeLeftovers();
});

describe('GraphiQL', () => {
  it('serves a page that references no other origin', async () => {
    const res = await fetch(`${url}/graphql`, { headers: { accept: 'text/html' } });
    expect(res.status).toBe(200);
    const html = await res.text();
    // Scripts, styles, icons and module imports of the page itself: none from another origin (yoga's default page
    // loads its scripts and styles from unpkg).
    const external = [
      ...html.matchAll(/\b(?:src|href)\s*=\s*["']?(https?:[^"'\s>]+)/g),
      ...html.matchAll(/\b(?:import|from)\s*\(?\s*["'](https?:[^"']+)/g),
    ].map((m) => m[1]);
    expect(external).toEqual([]);
  });

  it.skipIf(!HAS_CHROMIUM)('renders its editor and runs a query with every request kept local', async () => {
    browser = await launchChromium();
    const page = await browser.context.newPage();
    const requests: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    // Anything not for the local server fails, as it would offline.
    await page.route(
      (u) => !u.href.startsWith(`${url}/`),
      (route) => route.abort('internetdisconnected'),
    );
    const query = '{ models { id isDefault } }';
    await page.goto(`${url}/graphql?query=${encodeURIComponent(query)}`, WAIT);
    await page.waitForSelector('.graphiql-container .monaco-editor, .graphiql-container .CodeMirror', WAIT);
    await page.click('.graphiql-execute-button', WAIT);
    await page.waitForFunction(
      'document.querySelector(".graphiql-response")?.textContent?.includes("flux-1-dev-original")',
      undefined,
      WAIT,
    );
    const elsewhere = requests.filter(
      (u) => !u.startsWith(`${url}/`) && !u.startsWith('blob:') && !u.startsWith('data:'),
    );
    expect(elsewhere).toEqual([]);
    expect(requests.some((u) => u.startsWith(`${url}/graphql`))).toBe(true);
  });
});
