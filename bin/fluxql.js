#!/usr/bin/env node
// Entry point of the `fluxql` command. Production runs the compiled JavaScript (`npm run build` → dist/); a
// development checkout whose sources are newer than that build (or that has none) runs the TypeScript sources
// through tsx, a dev dependency. FLUXQL_FROM_SOURCE=1 forces the sources. This file is also the composition root
// that hands the CLI its engine compiler: src/ never imports engines/compiler (docs/ARCHITECTURE.md).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const compiled = join(root, 'dist', 'src', 'cli', 'main.js');
const compiledCompiler = join(root, 'dist', 'engines', 'compiler', 'port.js');
// Written by `npm run build` after tsc succeeds (tsc leaves its .tsbuildinfo untouched when nothing changed).
const stamp = join(root, 'dist', 'BUILD');
const sources = [join(root, 'src'), join(root, 'engines', 'compiler')];

/** Newest modification time under `dir` (only .ts files count), or 0 when it does not exist. */
function newestSource(dir) {
  if (!existsSync(dir)) return 0;
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

function distIsCurrent() {
  if (process.env.FLUXQL_FROM_SOURCE === '1' || !existsSync(compiled)) return false;
  if (!existsSync(join(root, 'src'))) return true; // an image that ships dist/ only
  const built = existsSync(stamp) ? statSync(stamp).mtimeMs : 0;
  return sources.every((dir) => newestSource(dir) <= built);
}

let cli;
let compiler;
if (distIsCurrent()) {
  cli = await import(pathToFileURL(compiled).href);
  compiler = await import(pathToFileURL(compiledCompiler).href);
} else {
  let register;
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    process.stderr.write(
      'fluxql: no compiled build (dist/) and no tsx to run the sources: run `npm run build` (or `npm ci` for development)\n',
    );
    process.exit(1);
  }
  register();
  cli = await import('../src/cli/main.ts');
  compiler = await import('../engines/compiler/port.ts');
}
await cli.runCli(process.argv, { compiler: compiler.engineCompiler });
