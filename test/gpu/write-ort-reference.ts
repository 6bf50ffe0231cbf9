/**
 * @file Writes the GPU checks' ONNX Runtime reference images to a JSON file, here (a machine with ONNX Runtime),
 * for the GPU machine whose Node bundle has no ONNX Runtime native library (engines/cuda/scripts/pack-node.sh):
 *   node --import tsx test/gpu/write-ort-reference.ts .device-carry/ort-reference.json
 * `device-run.sh server` passes it to the checks as FLUXQL_ORT_REFERENCE. One file holds every reference:
 * `cuda-checks.ts`'s case at the top level (`case`, `model`, `images`) and `cuda-lora-edit-checks.ts`'s cases keyed by
 * name under `cases`.
 */
import { statSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { MODEL_DIR } from '../helpers/paths.ts';
import { computeOrtReference, ORT_REFERENCE_CASE, type OrtReferenceFile, toBase64Images } from './cuda-checks.ts';
import { computeOrtCases } from './cuda-lora-edit-checks.ts';

const out = process.argv[2];
if (!out) throw new Error('usage: write-ort-reference.ts OUT.json');
const t0 = performance.now();
const images = await computeOrtReference();
const cases = await computeOrtCases();
const ref: OrtReferenceFile = {
  case: ORT_REFERENCE_CASE,
  model: basename(MODEL_DIR),
  images: toBase64Images(images),
  cases,
};
writeFileSync(out, JSON.stringify(ref));
const count = images.length + Object.values(cases).reduce((n, c) => n + c.images.length, 0);
console.log(
  `${out}: ${count} images (${ORT_REFERENCE_CASE.width}x${ORT_REFERENCE_CASE.height} and ${Object.keys(cases).join(', ')}), ` +
    `${(statSync(out).size / 1024).toFixed(0)} KiB, ${((performance.now() - t0) / 1000).toFixed(1)} s`,
);
