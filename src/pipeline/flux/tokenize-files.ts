/**
 * @file Reading a Hugging Face tokenizer folder (`tokenizer_config.json`, `special_tokens_map.json`, vocabularies)
 * with errors that name the offending file. Pure file IO and validation; no tokenization happens here.
 */
import { readFile } from 'node:fs/promises';

/** A tokenizer file is missing, unreadable or malformed, or a tokenizer argument is out of range. */
export class TokenizerError extends Error {
  /** The file at fault, when the error comes from a file. */
  readonly file: string | undefined;
  /** The argument at fault, when the error comes from a call. */
  readonly param: string | undefined;

  constructor(message: string, where: { file?: string; param?: string } = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TokenizerError';
    this.file = where.file;
    this.param = where.param;
  }
}

/** Reads a UTF-8 text file; a missing or unreadable file becomes a {@link TokenizerError} naming it. */
export async function readTextFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const what = code === 'ENOENT' ? 'missing tokenizer file' : 'cannot read tokenizer file';
    throw new TokenizerError(`${what}: ${file}`, { file }, { cause });
  }
}

/** Reads and parses a JSON object file; missing files and invalid JSON name the file. */
export async function readJsonObject(file: string): Promise<Record<string, unknown>> {
  const text = await readTextFile(file);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new TokenizerError(
      `corrupt tokenizer file (invalid JSON): ${file}: ${(cause as Error).message}`,
      { file },
      { cause },
    );
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new TokenizerError(`corrupt tokenizer file (expected a JSON object): ${file}`, { file });
  }
  return parsed as Record<string, unknown>;
}

/** Like {@link readJsonObject}, but a missing file yields `undefined` (for optional files). */
export async function readOptionalJsonObject(file: string): Promise<Record<string, unknown> | undefined> {
  try {
    return await readJsonObject(file);
  } catch (err) {
    if (err instanceof TokenizerError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
      return undefined;
    }
    throw err;
  }
}

/** The special tokens and limits a tokenizer folder declares. */
export interface TokenizerSettings {
  /** The merged `tokenizer_config.json` (with `special_tokens_map.json` applied), handed to the tokenizer library. */
  config: Record<string, unknown>;
  bosToken: string | undefined;
  eosToken: string;
  padToken: string;
  unkToken: string | undefined;
  /** `model_max_length` from `tokenizer_config.json`. */
  modelMaxLength: number;
}

const SPECIAL_KEYS = ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const;

/**
 * Special tokens may be serialised either as plain strings or as AddedToken objects (`{content, lstrip, ...}`);
 * this flattens both to the token text.
 */
function tokenText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

/**
 * Reads `tokenizer_config.json` (required) and `special_tokens_map.json` (optional, overriding the config as
 * transformers does) from a tokenizer folder.
 */
export async function readTokenizerSettings(dir: string): Promise<TokenizerSettings> {
  const configFile = `${dir}/tokenizer_config.json`;
  const mapFile = `${dir}/special_tokens_map.json`;
  const config = await readJsonObject(configFile);
  const map = (await readOptionalJsonObject(mapFile)) ?? {};

  const merged: Record<string, unknown> = { ...config };
  for (const key of SPECIAL_KEYS) {
    const fromMap = tokenText(map[key]);
    const fromConfig = tokenText(config[key]);
    const value = fromMap ?? fromConfig;
    if (value !== undefined) merged[key] = value;
    else delete merged[key];
  }
  if (Array.isArray(map.additional_special_tokens)) {
    merged.additional_special_tokens = map.additional_special_tokens.map(tokenText).filter((t) => t !== undefined);
  }

  const eosToken = tokenText(merged.eos_token);
  if (eosToken === undefined) {
    throw new TokenizerError(`tokenizer declares no eos_token: ${configFile}`, { file: configFile });
  }
  const padToken = tokenText(merged.pad_token);
  if (padToken === undefined) {
    throw new TokenizerError(`tokenizer declares no pad_token: ${configFile}`, { file: configFile });
  }
  const modelMaxLength = config.model_max_length;
  // transformers writes a huge sentinel (1e30) when no limit is known; FLUX's encoders need a real one.
  if (
    typeof modelMaxLength !== 'number' ||
    !Number.isInteger(modelMaxLength) ||
    modelMaxLength < 2 ||
    modelMaxLength > 1e6
  ) {
    throw new TokenizerError(`tokenizer_config.json has no usable model_max_length: ${configFile}`, {
      file: configFile,
    });
  }
  return {
    config: merged,
    bosToken: tokenText(merged.bos_token),
    eosToken,
    padToken,
    unkToken: tokenText(merged.unk_token),
    modelMaxLength,
  };
}
