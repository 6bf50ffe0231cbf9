/**
 * @file The one place the process's logger is made (pino): JSON lines on stdout, one object per line, at LOG_LEVEL;
 * human-readable (pino-pretty) only with LOG_PRETTY. `main.ts` creates it and passes it down (HTTP server, service,
 * scheduler, webhooks); nothing else creates or imports a logger instance.
 */
import pino, { type DestinationStream, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger } from 'pino';

/** Levels LOG_LEVEL accepts. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** How to log. */
export interface LogOptions {
  /** @default 'info' */
  level?: LogLevel;
  /** Colourised, human-readable lines instead of JSON. @default false */
  pretty?: boolean;
  /** Where lines go. @default stdout (synchronous writes, so lines are not lost at exit) */
  destination?: DestinationStream;
}

/** The process's logger; every line has `time`, `level` (as a label), `msg` and the fields given. */
export function createLogger(options: LogOptions = {}): Logger {
  const destination =
    options.destination ??
    (options.pretty ? pretty({ colorize: process.stdout.isTTY, sync: true }) : pino.destination({ sync: true }));
  return pino(
    {
      name: 'fluxql',
      level: options.level ?? 'info',
      base: { pid: process.pid },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Request lines carry the request's headers: never the bearer token or cookies.
      redact: { paths: ['req.headers.authorization', 'req.headers.cookie'], censor: '[redacted]' },
    },
    destination,
  );
}
