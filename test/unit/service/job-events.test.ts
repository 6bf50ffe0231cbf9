/** @file How a job ends (src/service/job-events.ts): the record and the terminal event come from one place. */
import { describe, expect, it } from 'vitest';
import { finishJob, isTerminalEvent, terminalEvent } from '../../../src/service/job-events.ts';
import type { Job } from '../../../src/service/jobs.ts';

function job(): Job {
  return {
    id: 'j1',
    request: {} as Job['request'],
    status: 'RUNNING',
    createdAt: new Date(Date.now() - 1000),
    step: 3,
    totalSteps: 4,
    images: [],
  };
}

describe('finishJob', () => {
  it('records a success and announces it with the images', () => {
    const j = job();
    const e = finishJob(j, { status: 'SUCCEEDED' });
    expect(j.status).toBe('SUCCEEDED');
    expect(j.finishedAt).toBeInstanceOf(Date);
    expect(e).toMatchObject({ type: 'succeeded', jobId: 'j1', images: [] });
    expect(e.elapsedMs).toBeGreaterThanOrEqual(1000);
    expect(isTerminalEvent(e)).toBe(true);
  });

  it('records a cancellation with its reason', () => {
    const j = job();
    expect(finishJob(j, { status: 'CANCELED', reason: 'client went away' })).toMatchObject({
      type: 'canceled',
      jobId: 'j1',
      reason: 'client went away',
    });
    expect(j).toMatchObject({ status: 'CANCELED', cancelReason: 'client went away' });
  });

  it('records a failure with its code and message', () => {
    const j = job();
    expect(finishJob(j, { status: 'FAILED', code: 'worker_lost', message: 'gone' })).toMatchObject({
      type: 'failed',
      code: 'worker_lost',
      message: 'gone',
    });
    expect(j.error).toEqual({ code: 'worker_lost', message: 'gone' });
  });

  it('gives the same event as terminalEvent reads back from the record', () => {
    for (const outcome of [
      { status: 'SUCCEEDED' },
      { status: 'CANCELED', reason: 'r' },
      { status: 'FAILED', code: 'c', message: 'm' },
    ] as const) {
      const j = job();
      const e = finishJob(j, outcome);
      expect({ ...terminalEvent(j), elapsedMs: 0 }).toEqual({ ...e, elapsedMs: 0 });
    }
  });
});
