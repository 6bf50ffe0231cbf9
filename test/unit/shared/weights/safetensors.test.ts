import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { f32ToBf16 } from '../../../../src/shared/weights/dtype.ts';
import { WeightsError } from '../../../../src/shared/weights/errors.ts';
import { openSafetensors } from '../../../../src/shared/weights/safetensors.ts';
import { writeSafetensors } from '../../../../src/shared/weights/safetensors-writer.ts';
import { useTempDir } from '../../../helpers/temp-dir.ts';

const tempDir = useTempDir('safetensors');

/** A safetensors file with an arbitrary header (object or raw text), data bytes and optional declared length. */
function rawFile(path: string, header: unknown, data: Uint8Array, declaredLength?: bigint): string {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(declaredLength ?? BigInt(json.byteLength));
  writeFileSync(path, Buffer.concat([len, json, data]));
  return path;
}

function expectWeightsError(fn: () => unknown, path: string, pattern: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(WeightsError);
    expect((err as WeightsError).message).toContain(path);
    expect((err as WeightsError).message).toMatch(pattern);
    return;
  }
  throw new Error('expected a WeightsError');
}

describe('safetensors round trip', () => {
  const values = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i * 1.3) * 10 ** ((i % 7) - 3));

  it('writes and reads F32, F16, BF16, raw integers and metadata', () => {
    const path = join(tempDir(), 'a.safetensors');
    const ids = new BigInt64Array([1n, -2n, 3n]);
    writeSafetensors(
      path,
      {
        f32: { dtype: 'F32', shape: [2, 3, 4], data: values },
        f16: { dtype: 'F16', shape: [24], data: values },
        bf16: { dtype: 'BF16', shape: [4, 6], data: values },
        ids: { dtype: 'I64', shape: [3], data: new Uint8Array(ids.buffer) },
        empty: { dtype: 'F32', shape: [0, 5], data: new Float32Array(0) },
      },
      { format: 'pt', note: 'test' },
    );
    const f = openSafetensors(path);
    try {
      expect(f.metadata).toEqual({ format: 'pt', note: 'test' });
      expect(f.names()).toEqual(['f32', 'f16', 'bf16', 'ids', 'empty']);
      expect(f.info('bf16')).toEqual({ dtype: 'BF16', shape: [4, 6], byteLength: 48 });
      expect(f.readF32('f32')).toEqual(values);
      // bf16 values are the f32 values rounded to nearest even on the top 16 bits.
      const bf = f.readF32('bf16');
      const rounded = f32ToBf16(values);
      for (let i = 0; i < values.length; i++) {
        expect(new Uint32Array(bf.buffer)[i]).toBe((rounded[i]! << 16) >>> 0);
        // Half a bf16 ulp: 8 significant bits.
        expect(Math.abs(bf[i]! - values[i]!)).toBeLessThanOrEqual(Math.abs(values[i]!) * 2 ** -8);
      }
      const h = f.readF32('f16');
      for (let i = 0; i < values.length; i++) {
        // f16 keeps 11 significant bits in its normal range; tiny values fall to the 2^-24 subnormal grid.
        expect(Math.abs(h[i]! - values[i]!)).toBeLessThanOrEqual(Math.max(Math.abs(values[i]!) * 2 ** -11, 2 ** -25));
      }
      expect(new BigInt64Array(f.readBytes('ids').buffer, 0, 3)).toEqual(ids);
      expect(f.readF32('empty').length).toBe(0);
      expect(f.readBytes('f32', 8, 16)).toEqual(Buffer.from(values.buffer, 8, 8));
      expectWeightsError(() => f.readF32('ids'), path, /integer dtype I64/);
      expectWeightsError(() => f.info('nope'), path, /no tensor named 'nope'/);
      expectWeightsError(() => f.readBytes('f32', 0, 1000), path, /byte range/);
    } finally {
      f.close();
    }
    expectWeightsError(() => f.readF32('f32'), path, /after close/);
    f.close();
  });

  it('pads the header to 8 bytes so data is aligned', () => {
    const path = join(tempDir(), 'pad.safetensors');
    writeSafetensors(path, { x: { dtype: 'F32', shape: [1], data: Float32Array.of(1) } });
    const len = Number(readFileSync(path).readBigUInt64LE(0));
    expect(len % 8).toBe(0);
    expect(statSync(path).size).toBe(8 + len + 4);
  });

  it('reads fp8 tensors written as raw bytes', () => {
    const path = join(tempDir(), 'fp8.safetensors');
    writeSafetensors(path, {
      e4m3: { dtype: 'F8_E4M3', shape: [3], data: Uint8Array.of(0x38, 0xb8, 0x7e) },
      e5m2: { dtype: 'F8_E5M2', shape: [2], data: Uint8Array.of(0x3c, 0x40) },
    });
    const f = openSafetensors(path);
    expect(Array.from(f.readF32('e4m3'))).toEqual([1, -1, 448]);
    expect(Array.from(f.readF32('e5m2'))).toEqual([1, 2]);
    f.close();
  });

  it('rejects data that does not match dtype and shape when writing', () => {
    const path = join(tempDir(), 'bad.safetensors');
    expectWeightsError(
      () => writeSafetensors(path, { x: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }),
      path,
      /'x': 3 values/,
    );
    expectWeightsError(
      () => writeSafetensors(path, { x: { dtype: 'I32', shape: [2], data: new Uint8Array(7) } }),
      path,
      /7 bytes/,
    );
  });
});

describe('safetensors validation', () => {
  const good = { x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  it('rejects a truncated file', () => {
    const path = join(tempDir(), 'short.safetensors');
    writeFileSync(path, Buffer.from([1, 2, 3]));
    expectWeightsError(() => openSafetensors(path), path, /truncated/);
  });

  it('rejects a header length beyond the file', () => {
    const path = rawFile(join(tempDir(), 'len.safetensors'), good, new Uint8Array(8), 1_000_000n);
    expectWeightsError(() => openSafetensors(path), path, /header length 1000000 exceeds/);
  });

  it('rejects a header that is not JSON', () => {
    const path = rawFile(join(tempDir(), 'json.safetensors'), '{"x": {', new Uint8Array(8));
    expectWeightsError(() => openSafetensors(path), path, /not valid JSON/);
  });

  it('rejects offsets outside the data region', () => {
    const path = rawFile(
      join(tempDir(), 'off.safetensors'),
      { x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } },
      new Uint8Array(8),
    );
    expectWeightsError(() => openSafetensors(path), path, /'x'.*outside the 8-byte data region/);
  });

  it('rejects offsets inconsistent with dtype and shape', () => {
    const path = rawFile(
      join(tempDir(), 'size.safetensors'),
      { x: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } },
      new Uint8Array(16),
    );
    expectWeightsError(() => openSafetensors(path), path, /span 8 bytes but F32\[3\] needs 12/);
  });

  it('rejects overlapping tensors', () => {
    const header = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    const path = rawFile(join(tempDir(), 'overlap.safetensors'), header, new Uint8Array(12));
    expectWeightsError(() => openSafetensors(path), path, /'a' and 'b' overlap/);
  });

  it('rejects an unknown dtype, naming the tensor', () => {
    const path = rawFile(
      join(tempDir(), 'dtype.safetensors'),
      { w: { dtype: 'F4', shape: [2], data_offsets: [0, 1] } },
      new Uint8Array(1),
    );
    expectWeightsError(() => openSafetensors(path), path, /tensor 'w': unknown dtype 'F4'/);
  });

  it('rejects non-string metadata and a missing file', () => {
    const path = rawFile(join(tempDir(), 'meta.safetensors'), { __metadata__: { n: 1 }, ...good }, new Uint8Array(8));
    expectWeightsError(() => openSafetensors(path), path, /__metadata__.n is not a string/);
    const missing = join(tempDir(), 'missing.safetensors');
    expectWeightsError(() => openSafetensors(missing), missing, /cannot open/);
  });
});
