import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FluxArgumentError } from '../../../../src/pipeline/flux/latents.ts';
import {
  calculateShift,
  eulerStep,
  FLUX_DEV_SCHEDULER,
  fluxSigmas,
  loadSchedulerConfig,
  modelTimestep,
  parseSchedulerConfig,
  SchedulerConfigError,
} from '../../../../src/pipeline/flux/schedule.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../../../helpers/paths.ts';
import { readSafetensorsF32 } from '../../../helpers/read-safetensors.ts';

interface PipelineCase {
  file: string;
  height: number;
  width: number;
  steps: number;
}
const index = JSON.parse(readFileSync(join(FIXTURES_DIR, 'index.json'), 'utf8')) as { pipeline_cases: PipelineCase[] };

describe('scheduler config', () => {
  it('parses the model scheduler_config.json into FLUX.1-dev settings', () => {
    expect(loadSchedulerConfig(MODEL_DIR)).toEqual(FLUX_DEV_SCHEDULER);
  });

  it('fills diffusers defaults for absent fields', () => {
    const cfg = parseSchedulerConfig({});
    expect(cfg.useDynamicShifting).toBe(false);
    expect(cfg.shift).toBe(1);
    expect(cfg.numTrainTimesteps).toBe(1000);
  });

  it('names the file and field on bad content', () => {
    expect(() => parseSchedulerConfig({ shift: 'x' }, 'a/scheduler_config.json')).toThrow(
      /a\/scheduler_config\.json: shift/,
    );
    expect(() => parseSchedulerConfig({ use_karras_sigmas: true })).toThrow(SchedulerConfigError);
    expect(() => parseSchedulerConfig({ time_shift_type: 'cosine' })).toThrow(/time_shift_type/);
  });

  it('names the file when it is not JSON', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-sched-'));
    mkdirSync(join(dir, 'scheduler'));
    writeFileSync(join(dir, 'scheduler', 'scheduler_config.json'), '{ not json');
    expect(() => loadSchedulerConfig(dir)).toThrow(/scheduler_config\.json: cannot read JSON/);
  });
});

describe('calculateShift', () => {
  it('is the unclamped line through (256, 0.5) and (4096, 1.15)', () => {
    expect(calculateShift(256, FLUX_DEV_SCHEDULER)).toBeCloseTo(0.5, 12);
    expect(calculateShift(1024, FLUX_DEV_SCHEDULER)).toBeCloseTo(0.63, 12);
    expect(calculateShift(4096, FLUX_DEV_SCHEDULER)).toBeCloseTo(1.15, 12);
    expect(calculateShift(16384, FLUX_DEV_SCHEDULER)).toBeCloseTo(3.23, 12);
  });

  it('rejects a non-positive sequence length', () => {
    expect(() => calculateShift(0, FLUX_DEV_SCHEDULER)).toThrow(FluxArgumentError);
  });
});

describe('fluxSigmas', () => {
  for (const c of index.pipeline_cases) {
    it(`matches diffusers bit for bit on ${c.file} (${c.height}x${c.width}, ${c.steps} steps)`, () => {
      const ref = readSafetensorsF32(join(FIXTURES_DIR, c.file));
      const seqLen = (c.height / 16) * (c.width / 16);
      const s = fluxSigmas(c.steps, seqLen, loadSchedulerConfig(MODEL_DIR));
      expect(Array.from(s.sigmas)).toEqual(Array.from(ref.sigmas!.data));
      expect(Array.from(s.timesteps)).toEqual(Array.from(ref.timesteps!.data));
    });
  }

  it('follows the exponential time shift for 1024² and 28 steps', () => {
    const { sigmas, timesteps, mu } = fluxSigmas(28, 4096, FLUX_DEV_SCHEDULER);
    expect(mu).toBeCloseTo(1.15, 12);
    expect(sigmas.length).toBe(29);
    expect(sigmas[28]).toBe(0);
    const e = Math.exp(1.15);
    for (let i = 0; i < 28; i++) {
      const t = 1 - i / 28;
      expect(sigmas[i]).toBeCloseTo(e / (e + (1 / t - 1)), 6);
      expect(timesteps[i]).toBe(Math.fround(sigmas[i]! * 1000));
    }
    expect(Array.from(sigmas.slice(0, 5)).map((x) => Number(x.toFixed(4)))).toEqual([
      1.0, 0.9884, 0.9762, 0.9634, 0.9499,
    ]);
  });

  it('uses the static shift formula when dynamic shifting is off', () => {
    const cfg = { ...FLUX_DEV_SCHEDULER, useDynamicShifting: false, shift: 3 };
    const { sigmas, mu } = fluxSigmas(10, 4096, cfg);
    expect(mu).toBeNull();
    for (let i = 0; i < 10; i++) {
      const t = 1 - i / 10;
      expect(sigmas[i]).toBeCloseTo((3 * t) / (1 + 2 * t), 6);
    }
  });

  it('stretches to shift_terminal when set', () => {
    const cfg = { ...FLUX_DEV_SCHEDULER, shiftTerminal: 0.1 };
    const { sigmas } = fluxSigmas(8, 1024, cfg);
    expect(sigmas[7]).toBeCloseTo(0.1, 6);
    expect(sigmas[0]).toBe(1);
  });

  it('handles a single step', () => {
    const { sigmas, timesteps } = fluxSigmas(1, 1024, FLUX_DEV_SCHEDULER);
    expect(Array.from(sigmas)).toEqual([1, 0]);
    expect(Array.from(timesteps)).toEqual([1000]);
  });

  it('rejects bad steps and sequence lengths by name', () => {
    expect(() => fluxSigmas(0, 1024, FLUX_DEV_SCHEDULER)).toThrow(/^steps:/);
    expect(() => fluxSigmas(2.5, 1024, FLUX_DEV_SCHEDULER)).toThrow(FluxArgumentError);
    expect(() => fluxSigmas(4, -1, FLUX_DEV_SCHEDULER)).toThrow(/^imageSeqLen:/);
  });
});

describe('modelTimestep', () => {
  it('is t/1000 in float32', () => {
    const { timesteps } = fluxSigmas(6, 48, FLUX_DEV_SCHEDULER);
    for (const t of timesteps) {
      expect(modelTimestep(t)).toBe(Math.fround(t / 1000));
      expect(Math.abs(modelTimestep(t) - t / 1000)).toBeLessThan(1e-7);
    }
  });
});

describe('eulerStep', () => {
  it('computes latents + (sigmaNext - sigma) * v in float32 into a new array', () => {
    const x = Float32Array.from([1, -2, 0.5, 3]);
    const v = Float32Array.from([0.25, 4, -1, 0]);
    const out = eulerStep(x, v, 0.75, 0.5);
    expect(out).not.toBe(x);
    expect(Array.from(out)).toEqual([1 - 0.0625, -3, 0.75, 3]);
    expect(Array.from(x)).toEqual([1, -2, 0.5, 3]);
  });

  it('rounds dt and the product to float32 like torch', () => {
    const s = Math.fround(0.888373076915741);
    const sn = Math.fround(0.7609580159187317);
    const x = Float32Array.from([0.1234567, -1.5]);
    const v = Float32Array.from([0.3333333, 2.7182817]);
    const out = eulerStep(x, v, s, sn);
    const dt = Math.fround(sn - s);
    for (let i = 0; i < 2; i++) expect(out[i]).toBe(Math.fround(x[i]! + Math.fround(dt * v[i]!)));
  });

  it('updates in place when out is the latents array', () => {
    const x = Float32Array.from([1, 2]);
    const r = eulerStep(x, Float32Array.from([1, 1]), 1, 0, x);
    expect(r).toBe(x);
    expect(Array.from(x)).toEqual([0, 1]);
  });

  it('rejects mismatched lengths by name', () => {
    expect(() => eulerStep(new Float32Array(4), new Float32Array(3), 1, 0)).toThrow(/^v:/);
    expect(() => eulerStep(new Float32Array(4), new Float32Array(4), 1, 0, new Float32Array(2))).toThrow(/^out:/);
  });
});
