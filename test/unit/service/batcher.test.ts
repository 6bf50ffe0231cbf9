import { describe, expect, it } from 'vitest';
import { batchKey, nextBatch, type QueueEntry } from '../../../src/service/batcher.ts';

const A = batchKey({ mode: 'original', width: 64, height: 64, steps: 4 });
const B = batchKey({ mode: 'original', width: 128, height: 64, steps: 4 });
const entry = (jobId: string, key = A, samples = 1, enqueuedAt = 0): QueueEntry => ({
  jobId,
  key,
  samples,
  enqueuedAt,
});
const policy = { maxBatch: 4, maxQueueDelayMs: 50 };
const sel = (name: string, strength = 1) => ({ name, strength });

describe('batchKey', () => {
  it('separates modes, sizes, steps and LoRA sets but not LoRA order', () => {
    const base = { mode: 'original', width: 64, height: 64, steps: 4 };
    expect(batchKey(base)).not.toBe(batchKey({ ...base, mode: 'S' }));
    expect(batchKey(base)).not.toBe(batchKey({ ...base, steps: 5 }));
    expect(batchKey({ ...base, loras: [sel('a'), sel('b')] })).toBe(batchKey({ ...base, loras: [sel('b'), sel('a')] }));
    expect(batchKey({ ...base, loras: [sel('a')] })).not.toBe(batchKey(base));
    expect(batchKey({ ...base, loras: [sel('a', 0.5)] })).not.toBe(batchKey({ ...base, loras: [sel('a')] }));
  });
});

describe('nextBatch on an idle engine', () => {
  it('is idle with an empty queue', () => {
    expect(nextBatch([], null, policy, 0)).toEqual({ kind: 'idle' });
  });

  it('waits for companions until the head has waited maxQueueDelayMs', () => {
    expect(nextBatch([entry('1', A, 1, 100)], null, policy, 120)).toEqual({ kind: 'wait', untilMs: 150 });
    expect(nextBatch([entry('1', A, 1, 100)], null, policy, 150)).toEqual({ kind: 'admit', jobIds: ['1'] });
  });

  it('starts at once when the batch is full (max size)', () => {
    const q = ['1', '2', '3', '4', '5'].map((id) => entry(id));
    expect(nextBatch(q, null, policy, 0)).toEqual({ kind: 'admit', jobIds: ['1', '2', '3', '4'] });
  });

  it('gathers the head group across other groups, in FIFO order', () => {
    const q = [entry('1', A), entry('2', B), entry('3', A), entry('4', B)];
    expect(nextBatch(q, null, policy, 1000)).toEqual({ kind: 'admit', jobIds: ['1', '3'] });
  });

  it('stops at a job that would overflow the batch instead of skipping it (order kept)', () => {
    const q = [entry('1', A, 3), entry('2', A, 2), entry('3', A, 1)];
    expect(nextBatch(q, null, policy, 1000)).toEqual({ kind: 'admit', jobIds: ['1'] });
  });

  it('runs a job larger than the batch alone rather than never', () => {
    expect(nextBatch([entry('1', A, 6)], null, policy, 0)).toEqual({ kind: 'admit', jobIds: ['1'] });
  });
});

describe('nextBatch with a running batch', () => {
  it('lets compatible jobs join at a step boundary while there is room', () => {
    const q = [entry('1'), entry('2'), entry('3')];
    expect(nextBatch(q, { key: A, samples: 2 }, policy, 0)).toEqual({ kind: 'admit', jobIds: ['1', '2'] });
  });

  it('never waits for the delay when joining', () => {
    expect(nextBatch([entry('1', A, 1, 100)], { key: A, samples: 1 }, policy, 100)).toEqual({
      kind: 'admit',
      jobIds: ['1'],
    });
  });

  it('admits nothing when the head is incompatible (FIFO fairness across groups)', () => {
    const q = [entry('1', B), entry('2', A)];
    expect(nextBatch(q, { key: A, samples: 1 }, policy, 0)).toEqual({ kind: 'idle' });
  });

  it('admits nothing when full', () => {
    expect(nextBatch([entry('1')], { key: A, samples: 4 }, policy, 0)).toEqual({ kind: 'idle' });
  });
});

describe('batchKey of edits and true CFG', () => {
  const base = { mode: 'original', width: 64, height: 64, steps: 4 };
  it('keeps text-to-image, img2img, inpainting, other strengths and true-CFG scales apart', () => {
    const keys = [
      batchKey(base),
      batchKey({ ...base, edit: 'img2img@0.6' }),
      batchKey({ ...base, edit: 'img2img@0.8' }),
      batchKey({ ...base, edit: 'inpaint@0.6' }),
      batchKey({ ...base, trueCfg: 2 }),
      batchKey({ ...base, trueCfg: 4 }),
    ];
    expect(new Set(keys).size).toBe(keys.length);
    expect(batchKey({ ...base, edit: 'img2img@0.6' })).toBe(batchKey({ ...base, edit: 'img2img@0.6' }));
  });
});
