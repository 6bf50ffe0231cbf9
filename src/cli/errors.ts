/**
 * @file How the command line reports failure: one line on stderr (`fluxql: <message>`) and a non-zero exit, never a
 * stack trace for a user's mistake. Typed errors of every layer (ConfigError naming the variable, WeightsError
 * naming the path, InvalidSizeError, UnknownModeError, …) already carry a message that says what is wrong, so the
 * message is all a user needs; `FLUXQL_DEBUG=1` adds the stack for bug reports.
 */

import { cliDebugEnabled } from '../config.ts';

/** A bad command-line argument (an option value commander cannot check by itself). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Exit status for bad input (arguments, environment, model path) versus a failure while running. */
export const EXIT_USAGE = 2;
export const EXIT_FAILURE = 1;

/** Error classes whose message is about the user's input: exit {@link EXIT_USAGE}. */
const INPUT_ERRORS = new Set([
  'UsageError',
  'ConfigError',
  'WeightsError',
  'InvalidSizeError',
  'FluxArgumentError',
  'UnknownModeError',
  'ModeUnavailableError',
  'HubError',
  'ProviderUnavailableError',
  'CudaEngineNotFoundError',
  'CudaModeUnavailableError',
  'LoraError',
]);

/** The one line printed for `err` (its message, flattened onto one line). */
export function formatCliError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return `fluxql: ${message.replace(/\s*\n\s*/g, ' ').trim() || 'failed'}`;
}

/** The exit status for `err`. */
export function exitCodeFor(err: unknown): number {
  return err instanceof Error && INPUT_ERRORS.has(err.name) ? EXIT_USAGE : EXIT_FAILURE;
}

/** Prints `err` as one line (plus its stack when FLUXQL_DEBUG is set) and exits. */
export function exitWithError(err: unknown): never {
  process.stderr.write(`${formatCliError(err)}\n`);
  if (cliDebugEnabled() && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  // Exit now: a failed start may leave a worker thread or child process that would keep the process alive.
  process.exit(exitCodeFor(err));
}
