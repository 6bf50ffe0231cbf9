import { describe, expect, it } from 'vitest';
import { canAccess, type Job, pastDeadline } from '../../../src/service/jobs.ts';
import { decodeJob, encodeJob } from '../../../src/service/redis/codec.ts';

const job = (extra: Partial<Job> = {}): Job =>
  ({
    id: 'j1',
    request: { prompt: 'x' },
    status: 'QUEUED',
    createdAt: new Date('2026-01-01T00:00:00Z'),
    step: 0,
    totalSteps: 4,
    images: [],
    ...extra,
  }) as unknown as Job;

describe('job scoping', () => {
  it('lets the owner and admins see a job, and everyone where the server has no keys', () => {
    const mine = job({ owner: 'alice' });
    expect(canAccess(mine, { name: 'alice', admin: false })).toBe(true);
    expect(canAccess(mine, { name: 'bob', admin: false })).toBe(false);
    expect(canAccess(mine, { name: 'ops', admin: true })).toBe(true);
    expect(canAccess(mine, undefined)).toBe(true);
    expect(canAccess(job(), { name: 'bob', admin: false })).toBe(false);
  });

  it('carries the owner and the deadline through the Redis record (scale-out)', () => {
    const back = decodeJob(encodeJob(job({ owner: 'alice', timeoutMs: 5000 })));
    expect(back.owner).toBe('alice');
    expect(back.timeoutMs).toBe(5000);
    expect(pastDeadline(back, back.createdAt.getTime() + 4999)).toBe(false);
    expect(pastDeadline(back, back.createdAt.getTime() + 5001)).toBe(true);
    expect(pastDeadline(job(), Date.now())).toBe(false);
  });
});
