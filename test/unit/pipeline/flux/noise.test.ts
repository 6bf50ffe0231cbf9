import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { FluxArgumentError } from '../../../../src/pipeline/flux/latents.ts';
import { MT19937 } from '../../../../src/pipeline/flux/mt19937.ts';
import { noiseForBatch, noiseForSeeds, TorchCpuGenerator } from '../../../../src/pipeline/flux/noise.ts';
import { REPO_ROOT } from '../../../helpers/paths.ts';

interface RandnDump {
  meta: { torch: string; cpu_capability: string };
  cases: { seed: number; shape: number[]; values: number[] }[];
  summary: {
    seed: number;
    shape: number[];
    head: number[];
    tail: number[];
    sum: number;
    sumsq: number;
    crc32: number;
  };
}
const dump = (name: string) =>
  JSON.parse(readFileSync(join(REPO_ROOT, 'test/fixtures/torch-randn', name), 'utf8')) as RandnDump;
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

describe('MT19937', () => {
  it('produces the reference outputs for the default seed 5489', () => {
    const mt = new MT19937(5489);
    expect([mt.nextUint32(), mt.nextUint32(), mt.nextUint32(), mt.nextUint32(), mt.nextUint32()]).toEqual([
      3499211612, 581869302, 3890346734, 3586334585, 545404204,
    ]);
  });

  it('gives 4123659995 as the 10000th output for seed 5489 (C++ std::mt19937 check value)', () => {
    const mt = new MT19937(5489);
    let v = 0;
    for (let i = 0; i < 10000; i++) v = mt.nextUint32();
    expect(v).toBe(4123659995);
  });

  it('uses the low 32 bits of the seed, as torch does', () => {
    const a = new MT19937(5);
    const b = new MT19937(2 ** 32 + 5);
    for (let i = 0; i < 5; i++) expect(a.nextUint32()).toBe(b.nextUint32());
  });
});

describe('torch.randn parity', () => {
  it("reproduces torch's vectorised (AVX2/AVX512) kernel bit for bit", () => {
    const d = dump('randn-avx2.json');
    expect(d.meta.cpu_capability).toBe('AVX2');
    for (const c of d.cases) {
      const x = new TorchCpuGenerator(c.seed).randn(numel(c.shape));
      expect(Array.from(x)).toEqual(c.values);
    }
    const s = d.summary;
    const big = noiseForBatch(s.seed, s.shape[0]!, s.shape[1]!, s.shape[2]!, s.shape[3]!);
    expect(Array.from(big.subarray(0, 64))).toEqual(s.head);
    expect(Array.from(big.subarray(big.length - 64))).toEqual(s.tail);
    // Every one of the 262144 values, through the CRC-32 of the little-endian float32 bytes (x86 and ARM hosts).
    expect(crc32(new Uint8Array(big.buffer))).toBe(s.crc32);
    let sum = 0;
    let sumsq = 0;
    for (const v of big) {
      sum += v;
      sumsq += v * v;
    }
    expect(sum).toBeCloseTo(s.sum, 5);
    expect(sumsq).toBeCloseTo(s.sumsq, 3);
  });

  it("reproduces torch's scalar (DEFAULT) kernel to within one float32 ulp", () => {
    const d = dump('randn-default.json');
    expect(d.meta.cpu_capability).toBe('DEFAULT');
    let total = 0;
    let exact = 0;
    for (const c of d.cases) {
      const x = new TorchCpuGenerator(c.seed).randn(numel(c.shape), 'scalar');
      c.values.forEach((ref, i) => {
        total++;
        if (x[i] === ref) exact++;
        // One ulp of a float32 near |v| ≤ 8 is at most 2^-20.
        expect(Math.abs(x[i]! - ref)).toBeLessThanOrEqual(Math.max(Math.abs(ref), 1) * 2 ** -23);
      });
    }
    expect(exact / total).toBeGreaterThan(0.97);
  });
});

describe('seeded noise', () => {
  it('is deterministic and continues the stream across calls', () => {
    const a = noiseForBatch(42, 1, 16, 8, 8);
    expect(Array.from(noiseForBatch(42, 1, 16, 8, 8))).toEqual(Array.from(a));
    const g = new TorchCpuGenerator(42);
    const first = g.randn(1024);
    const second = g.randn(1024);
    expect(Array.from(first)).toEqual(Array.from(a));
    expect(Array.from(second)).not.toEqual(Array.from(first));
  });

  it('differs between seeds', () => {
    const a = noiseForBatch(1, 1, 16, 4, 4);
    const b = noiseForBatch(2, 1, 16, 4, 4);
    let same = 0;
    for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
    expect(same).toBe(0);
  });

  it('is standard normal over a large draw', () => {
    for (const kernel of ['vectorized', 'scalar'] as const) {
      const x = noiseForBatch(123, 1, 16, 128, 128, kernel);
      let sum = 0;
      let sumsq = 0;
      let within1 = 0;
      for (const v of x) {
        sum += v;
        sumsq += v * v;
        if (Math.abs(v) < 1) within1++;
      }
      const mean = sum / x.length;
      const std = Math.sqrt(sumsq / x.length - mean * mean);
      expect(Math.abs(mean)).toBeLessThan(0.01);
      expect(Math.abs(std - 1)).toBeLessThan(0.01);
      expect(within1 / x.length).toBeCloseTo(0.6827, 2);
    }
  });

  it('gives each sample its own generator in noiseForSeeds', () => {
    const x = noiseForSeeds([7, 8], 16, 4, 6);
    expect(x.length).toBe(2 * 16 * 4 * 6);
    expect(Array.from(x.subarray(0, 384))).toEqual(Array.from(noiseForBatch(7, 1, 16, 4, 6)));
    expect(Array.from(x.subarray(384))).toEqual(Array.from(noiseForBatch(8, 1, 16, 4, 6)));
    // A single batch draw is one stream instead: its second sample is not seed 8's noise.
    expect(Array.from(noiseForBatch(7, 2, 16, 4, 6).subarray(384))).not.toEqual(Array.from(x.subarray(384)));
  });

  it('rejects bad seeds and sizes by name', () => {
    expect(() => noiseForBatch(1.5, 1, 16, 2, 2)).toThrow(/^seed:/);
    expect(() => noiseForBatch(2 ** 60, 1, 16, 2, 2)).toThrow(FluxArgumentError);
    expect(() => noiseForBatch(1, 0, 16, 2, 2)).toThrow(/^b:/);
    expect(() => noiseForSeeds([], 16, 2, 2)).toThrow(/^seeds:/);
    expect(() => noiseForSeeds([1, Number.NaN], 16, 2, 2)).toThrow(/^seeds\[1\]:/);
    expect(() => new TorchCpuGenerator(0).randn(8)).toThrow(/^count:/);
  });
});
