/**
 * @file BFL checkpoint fixtures for the weight tests: the builders live in `tools/bfl-checkpoint.ts` (no
 * vitest there, so scripts can use them too); this adds the vitest assertion they share.
 */
import { expect } from 'vitest';

export {
  loadDiffusers,
  type Tensor,
  transformerToBfl,
  vaeToBfl,
  writeBflCheckpoints,
  writeTensors,
} from '../../tools/bfl-checkpoint.ts';

/** Bit-exact float32 equality; byte comparison first because element-wise `toEqual` is slow on large arrays. */
export function expectF32Equal(actual: Float32Array, expected: Float32Array, label: string): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (!a.equals(b)) expect(Array.from(actual), label).toEqual(Array.from(expected));
}
