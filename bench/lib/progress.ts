/**
 * @file Progress bars for the benchmarks (cli-progress, on stderr so stdout keeps only the report): one bar per
 * phase, with what is running as `task` and an ETA; messages (model loading, engine compiles, per-mode results) are
 * printed above the bars. Without a terminal, cli-progress prints the bars' state every few seconds instead.
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress';

/** A bar of one phase. */
export interface Bar {
  /** Advances by `n` (default 1), optionally changing the task shown. */
  tick(task?: string, n?: number): void;
  /** Sets the task shown without advancing. */
  task(task: string): void;
  /** Fills and freezes the bar. */
  done(): void;
}

/** The bars of one benchmark run. */
export interface Progress {
  bar(label: string, total: number): Bar;
  /** A line above the bars. */
  log(message: string): void;
  /** Stops redrawing; call before printing the report. */
  stop(): void;
}

/** Starts the bars of a benchmark. */
export function createProgress(): Progress {
  const multi = new MultiBar(
    {
      stream: process.stderr,
      format: '{label} |{bar}| {value}/{total} {percentage}% | ETA {eta_formatted} | {task}',
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
      etaBuffer: 20,
      noTTYOutput: true,
      notTTYSchedule: 5000,
      autopadding: true,
    },
    Presets.shades_classic,
  );
  return {
    bar(label, total) {
      const bar: SingleBar = multi.create(Math.max(1, total), 0, { label, task: '' });
      return {
        tick: (task, n = 1) => bar.increment(n, task === undefined ? {} : { task }),
        task: (task) => bar.update({ task }),
        done: () => {
          bar.update(bar.getTotal(), { task: 'done' });
          bar.stop();
        },
      };
    },
    log: (message) => multi.log(`${message}\n`),
    stop: () => multi.stop(),
  };
}
