/** @file Errors of the Hugging Face hub layer: every message names the repo (and file) at fault. */

/** A model id that cannot be served: not in the cache while offline, unknown on the hub, no access, bad answer. */
export class HubError extends Error {
  constructor(
    readonly repo: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${repo}: ${message}`, options);
    this.name = 'HubError';
  }
}

/** A downloaded file whose sha256 (LFS) or git blob id does not match what the hub announced. It is deleted. */
export class ChecksumError extends HubError {
  constructor(repo: string, file: string, expected: string, actual: string) {
    super(repo, `${file}: checksum mismatch (expected ${expected}, got ${actual}); the download was discarded`);
    this.name = 'ChecksumError';
  }
}
