/**
 * @file `fluxql conformance --fixtures DIR`: runs every case listed in `DIR/index.json` against `DIR/flux-tiny` (or
 * `--model`) and prints one JSON line `{"passed","failed","cases":[...]}`; exits 1 when a case fails.
 */
import { join } from 'node:path';
import { FluxPipeline } from '../pipeline/flux/pipeline.ts';
import { pipelineCase, REFERENCE_LIMITS, textEncoderCases, tokenizerCases, transformerCase, type CaseResult } from './conformance/cases.ts';
import { readFixtureIndex } from './conformance/fixture-index.ts';

/** Runs the cases and returns the report (also used by tests). */
export async function conformanceReport(fixtures: string, model: string | undefined, mode = 'original') {
  const index = readFixtureIndex(fixtures);
  const pipe = await FluxPipeline.fromPretrained(model ?? join(fixtures, 'flux-tiny'), { modes: [mode] });
  try {
    const cases: CaseResult[] = [
      ...tokenizerCases(pipe, fixtures, index),
      ...(await textEncoderCases(pipe, fixtures, index, mode, REFERENCE_LIMITS)),
      ...(await transformerCase(pipe, fixtures, index, mode, REFERENCE_LIMITS)),
    ];
    for (const [i, c] of index.pipeline_cases.entries()) cases.push(...(await pipelineCase(pipe, fixtures, c, i, mode, REFERENCE_LIMITS)));
    const failed = cases.filter((c) => !c.ok).length;
    return { passed: cases.length - failed, failed, cases };
  } finally {
    await pipe.close();
  }
}

export async function runConformance(args: { fixtures: string; model?: string; mode: string }): Promise<void> {
  const report = await conformanceReport(args.fixtures, args.model, args.mode);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (report.failed > 0) process.exitCode = 1;
}
