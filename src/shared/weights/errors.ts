/**
 * @file The one error type of the weights layer. Every failure to find, parse or map a weight file is a
 * {@link WeightsError} whose message names the offending file or folder, so a bad download is diagnosable from the
 * log line alone.
 */

/** A weight file, folder or tensor is missing, malformed or unsupported. */
export class WeightsError extends Error {
  /** The file or folder the error is about. */
  readonly path: string;

  /**
   * @param path - the file or folder at fault; it is prefixed to the message.
   * @param message - what is wrong with it.
   */
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(`${path}: ${message}`, options);
    this.name = 'WeightsError';
    this.path = path;
  }
}
