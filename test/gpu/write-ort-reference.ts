/**
 * @file Writes the GPU checks' ONNX Runtime reference images to a JSON file, here (a machine with ONNX Runtime),
 * for the GPU machine whose Node bundle has no ONNX Runtime native library (engines/cuda/scripts/pack-node.sh):
 *   node --import tsx test/gpu/write-ort-reference.ts .device-carry/ort-reference.json
 * `device-run.sh server` passes it to the checks as FLUXQL_ORT_REFERENCE.
 */
import { writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { MODEL_DIR } from '../helpers/paths.ts';
import { computeOrtReference, ORT_REFERENCE_CASE } from './cuda-checks.ts';

const out = process.argv[2];
if (!out) throw new Error('usage: write-ort-reference.ts OUT.json');
const images = await computeOrtReference();
writeFileSync(
  out,
  JSON.stringify({
    case: ORT_REFERENCE_CASE,
    model: basename(MODEL_DIR),
    images: images.map((im) => Buffer.from(im).toString('base64')),
  }),
);
console.log(`${out}: ${images.length} images ${ORT_REFERENCE_CASE.width}x${ORT_REFERENCE_CASE.height}`);
