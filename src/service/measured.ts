/**
 * @file Latency this server measured, per mode and shape, shown by the `models` query next to the published
 * numbers. Only successful jobs count; times run from admission to images (queue wait excluded).
 */

/** Running means for one (mode, width, height, steps). */
export interface MeasuredLatency {
  mode: string;
  width: number;
  height: number;
  steps: number;
  /** Jobs measured. */
  jobs: number;
  /** Mean seconds from admission to stored images. */
  meanSeconds: number;
  /** Mean wall time of the step calls those jobs took part in. */
  meanStepMs: number;
}

/** Accumulates {@link MeasuredLatency} rows. */
export class MeasuredStats {
  readonly #rows = new Map<string, MeasuredLatency>();

  record(sample: { mode: string; width: number; height: number; steps: number; seconds: number; stepMs: number }) {
    const key = `${sample.mode}|${sample.width}x${sample.height}|${sample.steps}`;
    const row = this.#rows.get(key) ?? {
      mode: sample.mode,
      width: sample.width,
      height: sample.height,
      steps: sample.steps,
      jobs: 0,
      meanSeconds: 0,
      meanStepMs: 0,
    };
    row.jobs++;
    row.meanSeconds += (sample.seconds - row.meanSeconds) / row.jobs;
    row.meanStepMs += (sample.stepMs - row.meanStepMs) / row.jobs;
    this.#rows.set(key, row);
  }

  /** Rows of one mode, most measured first. */
  forMode(mode: string): MeasuredLatency[] {
    return [...this.#rows.values()].filter((r) => r.mode === mode).sort((a, b) => b.jobs - a.jobs);
  }
}
