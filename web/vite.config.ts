/**
 * @file Vite build of the web page: `web/` → `web/dist/` (hashed files under `assets/`, which the server caches
 * for a year; `index.html` is revalidated). Run by `npm run build:web`; the server only serves the result.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const root = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  root,
  base: '/',
  // No public/ folder: the page has no unhashed assets.
  publicDir: false,
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: true,
  },
  server: {
    // `npx vite --config web/vite.config.ts` for UI work against a running server (npm start on :8000).
    proxy: { '/graphql': { target: 'http://127.0.0.1:8000', ws: true }, '/images': 'http://127.0.0.1:8000' },
  },
});
