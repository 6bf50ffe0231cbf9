/**
 * @file The two FLUX.1-dev tokenizers: CLIP (BPE, padded to 77) and T5 v1.1 (SentencePiece unigram, padded to
 * `max_sequence_length`), producing int64 id tensors exactly as diffusers' `FluxPipeline` tokenizes
 * (`padding="max_length"`, `truncation=True`).
 *
 * Tokenization itself is `@huggingface/tokenizers`; this module owns what HF's Python wrapper does around it:
 * truncating the content so the end token survives, then padding. Special tokens, their ids and lengths are read
 * from the tokenizer folders, never assumed.
 */
import { access } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { buildClipTokenizerJson } from './tokenize-clip.ts';
import type { TokenizerSettings } from './tokenize-files.ts';
import { readJsonObject, readTokenizerSettings, TokenizerError } from './tokenize-files.ts';

export { TokenizerError } from './tokenize-files.ts';

/** Where the two tokenizer folders are, when they are not the standard `tokenizer/` and `tokenizer_2/`. */
/** FluxPipeline's `max_sequence_length` default. */
const DIFFUSERS_T5_LENGTH = 512;

export interface FluxTokenizerPaths {
  /** CLIP tokenizer folder (`vocab.json` + `merges.txt`, or a `tokenizer.json`). */
  clip: string;
  /** T5 tokenizer folder (`tokenizer.json`). */
  t5: string;
}

/** Both FLUX tokenizers, loaded once and shared by every request. */
export interface FluxTokenizers {
  /** CLIP sequence length (`model_max_length`, 77 for FLUX.1-dev). */
  readonly clipLength: number;
  /** Largest T5 sequence length (`model_max_length`, 512 for FLUX.1-dev). */
  readonly t5MaxLength: number;
  /**
   * T5 length a request that names none gets: diffusers' 512, or the tokenizer's `model_max_length` where that is
   * smaller (flux-mini declares 32: its captions are at most 16 tokens, and 32 text tokens cost far less than 512).
   */
  readonly defaultT5Length: number;
  /** CLIP ids `[B, clipLength]` row-major: BOS, tokens, EOS, then pad (EOS) up to the length. */
  encodeClip(prompts: string[]): BigInt64Array;
  /**
   * T5 ids `[B, maxSequenceLength]` row-major: tokens, `</s>`, then `<pad>` up to the length.
   * @param maxSequenceLength pad/truncate length, 1 … `t5MaxLength`. @default defaultT5Length
   */
  encodeT5(prompts: string[], maxSequenceLength?: number): BigInt64Array;
}

/**
 * One tokenizer plus the wrapping its post-processor applies (`prefix` ids, content, `suffix` ids), learnt once so
 * truncation can cut the content and keep the wrapping whole, as transformers' `truncation=True` does.
 */
class PaddedTokenizer {
  private readonly prefix: number[];
  private readonly suffix: number[];

  constructor(
    private readonly tokenizer: Tokenizer,
    readonly padId: number,
    readonly maxLength: number,
    eosId: number,
    source: string,
  ) {
    // Probe the post-processor: the plain encoding of a word sits inside its special-token encoding.
    const probe = 'a';
    const plain = tokenizer.encode(probe, { add_special_tokens: false }).ids;
    const full = tokenizer.encode(probe, { add_special_tokens: true }).ids;
    const at = indexOfRun(full, plain);
    if (plain.length === 0 || at < 0) {
      throw new TokenizerError(`tokenizer post-processor does not wrap the text: ${source}`, { file: source });
    }
    this.prefix = full.slice(0, at);
    this.suffix = full.slice(at + plain.length);
    // Both encoders pool or stop at the end token, so it must be the last one the post-processor adds.
    if (this.suffix[this.suffix.length - 1] !== eosId) {
      throw new TokenizerError(`tokenizer post-processor does not append eos_token (id ${eosId}): ${source}`, {
        file: source,
      });
    }
  }

  /** Writes the ids of `text`, truncated and padded to `length`, into `out` at `offset`. */
  encodeInto(text: string, length: number, out: BigInt64Array, offset: number): void {
    const content = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const room = length - this.prefix.length - this.suffix.length;
    const kept = content.length > room ? content.slice(0, Math.max(0, room)) : content;
    let ids = [...this.prefix, ...kept, ...this.suffix];
    // Only when `length` cannot even hold the wrapping: keep the end token last (the encoders rely on it).
    if (ids.length > length) ids = [...ids.slice(0, length - 1), ids[ids.length - 1] as number];
    let i = 0;
    for (; i < ids.length; i++) out[offset + i] = BigInt(ids[i] as number);
    const pad = BigInt(this.padId);
    for (; i < length; i++) out[offset + i] = pad;
  }

  /** Encodes a batch to `[B, length]`. */
  encodeBatch(prompts: string[], length: number): BigInt64Array {
    const out = new BigInt64Array(prompts.length * length); // [B, length]
    prompts.forEach((p, b) => {
      if (typeof p !== 'string') {
        throw new TokenizerError(`prompts[${b}] must be a string, got ${typeof p}`, { param: `prompts[${b}]` });
      }
      this.encodeInto(p, length, out, b * length);
    });
    return out;
  }
}

/** Index of the first occurrence of `run` inside `arr`, or -1. */
function indexOfRun(arr: number[], run: number[]): number {
  outer: for (let i = 0; i + run.length <= arr.length; i++) {
    for (let j = 0; j < run.length; j++) if (arr[i + j] !== run[j]) continue outer;
    return i;
  }
  return -1;
}

/** Creates the library tokenizer, turning its construction errors into ones naming the file. */
function createTokenizer(json: Record<string, unknown>, settings: TokenizerSettings, source: string): Tokenizer {
  try {
    return new Tokenizer(json, settings.config);
  } catch (cause) {
    throw new TokenizerError(
      `corrupt tokenizer definition: ${source}: ${(cause as Error).message}`,
      { file: source },
      { cause },
    );
  }
}

/** Looks up a special token's id; a token absent from the vocabulary names the file that declared it. */
function idOf(tokenizer: Tokenizer, token: string, role: string, source: string): number {
  const id = tokenizer.token_to_id(token);
  if (id === undefined) {
    throw new TokenizerError(`${role} ${JSON.stringify(token)} is not in the vocabulary: ${source}`, { file: source });
  }
  return id;
}

/** Does `file` exist? (Only to choose between `tokenizer.json` and the vocab/merges pair.) */
async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

/** Loads one tokenizer folder; `buildJson` supplies a definition when the folder has no `tokenizer.json`. */
async function loadPadded(
  dir: string,
  buildJson: ((dir: string, settings: TokenizerSettings) => Promise<Record<string, unknown>>) | undefined,
): Promise<PaddedTokenizer> {
  const settings = await readTokenizerSettings(dir);
  const jsonFile = `${dir}/tokenizer.json`;
  let json: Record<string, unknown>;
  let source: string;
  if (buildJson === undefined || (await exists(jsonFile))) {
    json = await readJsonObject(jsonFile);
    source = jsonFile;
  } else {
    json = await buildJson(dir, settings);
    source = `${dir}/vocab.json`;
  }
  const tokenizer = createTokenizer(json, settings, source);
  const eosId = idOf(tokenizer, settings.eosToken, 'eos_token', source);
  const padId = idOf(tokenizer, settings.padToken, 'pad_token', source);
  return new PaddedTokenizer(tokenizer, padId, settings.modelMaxLength, eosId, source);
}

/** Loaded tokenizers by resolved folder pair, so every caller shares one copy of the ~50k-entry tables. */
const cache = new Map<string, Promise<FluxTokenizers>>();

/**
 * Loads FLUX's CLIP and T5 tokenizers, once per folder pair (later calls share the same promise).
 * @param modelDirOrPaths the model repository (with `tokenizer/` and `tokenizer_2/`) or the two folders.
 * @throws TokenizerError naming the missing or corrupt file.
 */
export function loadFluxTokenizers(modelDirOrPaths: string | FluxTokenizerPaths): Promise<FluxTokenizers> {
  const paths: FluxTokenizerPaths =
    typeof modelDirOrPaths === 'string'
      ? { clip: resolve(modelDirOrPaths, 'tokenizer'), t5: resolve(modelDirOrPaths, 'tokenizer_2') }
      : { clip: resolve(modelDirOrPaths.clip), t5: resolve(modelDirOrPaths.t5) };
  const key = `${paths.clip}\0${paths.t5}`;
  let loading = cache.get(key);
  if (loading === undefined) {
    loading = createFluxTokenizers(paths);
    cache.set(key, loading);
    // A failed load must not poison the cache: the files may be fixed and loaded again.
    loading.catch(() => cache.delete(key));
  }
  return loading;
}

async function createFluxTokenizers(paths: FluxTokenizerPaths): Promise<FluxTokenizers> {
  const [clip, t5] = await Promise.all([
    loadPadded(paths.clip, buildClipTokenizerJson),
    loadPadded(paths.t5, undefined),
  ]);
  const defaultT5Length = Math.min(DIFFUSERS_T5_LENGTH, t5.maxLength);
  return {
    clipLength: clip.maxLength,
    t5MaxLength: t5.maxLength,
    encodeClip: (prompts) => clip.encodeBatch(checkPrompts(prompts), clip.maxLength),
    defaultT5Length,
    encodeT5: (prompts, maxSequenceLength = defaultT5Length) => {
      if (!Number.isInteger(maxSequenceLength) || maxSequenceLength < 1 || maxSequenceLength > t5.maxLength) {
        throw new TokenizerError(
          `maxSequenceLength must be an integer in 1…${t5.maxLength}, got ${maxSequenceLength}`,
          { param: 'maxSequenceLength' },
        );
      }
      return t5.encodeBatch(checkPrompts(prompts), maxSequenceLength);
    },
  };
}

function checkPrompts(prompts: string[]): string[] {
  if (!Array.isArray(prompts)) throw new TokenizerError('prompts must be an array of strings', { param: 'prompts' });
  return prompts;
}
