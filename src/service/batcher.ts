/**
 * @file The batching policy as a pure function over the queue, TGI `next_batch` style, so it can be tested as
 * state transitions without an engine or a clock.
 *
 * NOTE(api): two rules keep it fair and simple.
 * - Idle engine: the oldest job picks the group (its compatibility key); younger compatible jobs are gathered
 *   in FIFO order up to `maxBatch` samples, skipping other groups (they are all younger than the head, so the
 *   head's group going first is FIFO across groups). A job that would overflow the batch stops the gathering
 *   (pushed back, order kept). Below `maxBatch`, the batch waits until the head has waited `maxQueueDelayMs`.
 * - Running batch: at each step boundary, jobs join only from the head of the queue and only while they are
 *   compatible and fit. The first incompatible job stops joining, so a steady stream of one group cannot
 *   starve an older job of another group: the running batch drains and the older job goes next.
 */
import { type LoraSelection, loraSetKey, sortedLoraSet } from './pipeline.ts';

/** What the policy needs to know about a queued job. */
export interface QueueEntry {
  jobId: string;
  /** Compatibility key, see {@link batchKey}. */
  key: string;
  /** Samples (images) the job adds to a batch. */
  samples: number;
  /** `Date.now()` at submission. */
  enqueuedAt: number;
}

/** The running batch, as the policy sees it. */
export interface RunningBatch {
  key: string;
  samples: number;
}

/** Knobs, Triton `dynamic_batching` style. */
export interface BatchPolicy {
  /** Largest number of samples stepped together (MODEL_BATCH). */
  maxBatch: number;
  /** How long the oldest job may wait for companions before a partial batch starts (MAX_QUEUE_DELAY_MS). */
  maxQueueDelayMs: number;
}

/** What the scheduler should do next. */
export type BatchDecision =
  /** Nothing queued (and nothing can join). */
  | { kind: 'idle' }
  /** A partial batch is waiting for companions until `untilMs` (epoch ms). */
  | { kind: 'wait'; untilMs: number }
  /** Admit these jobs, in order: a new batch when nothing runs, else they join the running one. */
  | { kind: 'admit'; jobIds: string[] };

/**
 * Requests batch together only when the engine can step them as one tensor: same mode, size, steps, LoRA set (names
 * and strengths: a strength changes the output; in any order: the deltas add up), edit kind with strength, and
 * true-CFG scale.
 */
export function batchKey(parts: {
  mode: string;
  width: number;
  height: number;
  steps: number;
  loras?: readonly LoraSelection[];
  /** img2img / inpainting kind and strength (`inpaint@0.7`): they set how many steps run and the per-step work. */
  edit?: string;
  /** True CFG scale: such samples run a negative branch too (twice the transformer batch). */
  trueCfg?: number;
}): string {
  const loras = loraSetKey(sortedLoraSet(parts.loras ?? []));
  const edit = `${parts.edit ?? 't2i'}|cfg${parts.trueCfg ?? 1}`;
  return `${parts.mode}|${parts.width}x${parts.height}|${parts.steps}|${loras}|${edit}`;
}

/** Decides the next admission; see the NOTE at the top of this file. */
export function nextBatch(
  queue: readonly QueueEntry[],
  running: RunningBatch | null,
  policy: BatchPolicy,
  now: number,
): BatchDecision {
  const head = queue[0];
  if (!head) return { kind: 'idle' };

  if (running && running.samples > 0) {
    let room = policy.maxBatch - running.samples;
    const ids: string[] = [];
    for (const e of queue) {
      if (e.key !== running.key || e.samples > room) break;
      ids.push(e.jobId);
      room -= e.samples;
    }
    return ids.length > 0 ? { kind: 'admit', jobIds: ids } : { kind: 'idle' };
  }

  // A job larger than the batch still runs (alone): validation should prevent it, but never deadlock on it.
  let room = Math.max(policy.maxBatch, head.samples);
  const ids: string[] = [];
  for (const e of queue) {
    if (e.key !== head.key) continue;
    if (e.samples > room) break;
    ids.push(e.jobId);
    room -= e.samples;
    if (room === 0) break;
  }
  const deadline = head.enqueuedAt + policy.maxQueueDelayMs;
  if (room > 0 && now < deadline) return { kind: 'wait', untilMs: deadline };
  return { kind: 'admit', jobIds: ids };
}
