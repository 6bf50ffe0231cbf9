/**
 * @file The one error type of the LoRA layer. `code` tells the API what went wrong without parsing messages; the
 * message names the file and, where it applies, the offending keys.
 */

/** Why a LoRA was refused. */
export type LoraErrorCode =
  /** Not a readable safetensors file (truncated header, bad JSON, unsupported dtype). */
  | 'invalid_file'
  /** Keys of no known format, or keys a format does not map (named in `keys`). */
  | 'unmatched_keys'
  /** A factor's shape does not fit the model layer it targets. */
  | 'shape_mismatch'
  /** Rank outside 1..256, or inconsistent between the two factors. */
  | 'bad_rank'
  /** NaN or infinite values (tensors or alphas). */
  | 'non_finite'
  /** The path is outside LORA_DIR (`..`, absolute, symlink out) or not a file there. */
  | 'forbidden_path'
  /** No such LoRA file, or a set names a LoRA that is not loaded. */
  | 'not_found'
  /** The engine cannot run this LoRA (e.g. a control LoRA on an engine without the widened input). */
  | 'unsupported'
  /** A strength that is not a finite number, or a set that names one LoRA twice. */
  | 'bad_argument';

/**
 * A LoRA error as plain data: the one shape every layer passes on (a scan's invalid files, the worker protocol, the
 * service's `LoraRequestError`, the API's `LoraError` type).
 */
export interface LoraErrorData {
  code: LoraErrorCode;
  message: string;
  /** The LoRA (name or path) at fault, when there is one. */
  lora?: string;
  /** The offending tensor keys, for `unmatched_keys` / `shape_mismatch` / `non_finite`. */
  keys: readonly string[];
}

/** A LoRA file or LoRA set that cannot be used. */
export class LoraError extends Error implements LoraErrorData {
  constructor(
    readonly code: LoraErrorCode,
    message: string,
    /** The LoRA (name or path) at fault, when there is one. */
    readonly lora?: string,
    /** The offending tensor keys, for `unmatched_keys` / `shape_mismatch` / `non_finite`. */
    readonly keys: readonly string[] = [],
    options?: { cause?: unknown },
  ) {
    super(lora ? `${lora}: ${message}` : message, options);
    this.name = 'LoraError';
  }

  /** This error as {@link LoraErrorData}. */
  toData(): LoraErrorData {
    return { code: this.code, message: this.message, ...(this.lora ? { lora: this.lora } : {}), keys: this.keys };
  }
}

/** Lists at most `max` keys for a message, with a count of the rest. */
export function listKeys(keys: readonly string[], max = 8): string {
  const shown = keys.slice(0, max).join(', ');
  return keys.length > max ? `${shown} (and ${keys.length - max} more)` : shown;
}
