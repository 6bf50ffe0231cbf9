/** @file What every CPU benchmark records about the machine, and where results go (bench/results/<name>.json|md). */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';

/** The machine a CPU benchmark ran on. */
export function describeMachine(): { cpu: string; cores: number; memoryGiB: number; node: string } {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
  };
}

/** Writes `bench/results/<name>.json` and `<name>.md` under the repository root `repo`. */
export function writeResults(repo: string, name: string, report: unknown, markdown: string): void {
  const outDir = join(repo, 'bench/results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, `${name}.json`), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(outDir, `${name}.md`), markdown);
}
