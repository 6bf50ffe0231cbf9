/**
 * @file The CLIP tokenizer definition in Hugging Face `tokenizer.json` form, built in memory from `vocab.json` +
 * `merges.txt`, because FLUX.1-dev ships only the slow-tokenizer files for CLIP.
 *
 * The definition mirrors what `tokenizers`' CLIP converter produces: NFC, whitespace runs collapsed to one space,
 * lowercase; CLIP's word regex (kept matches, everything else dropped) then byte-level mapping without its own
 * regex; byte-pair merges with the `</w>` end-of-word suffix; BOS/EOS wrapped around the sequence.
 */
import type { TokenizerSettings } from './tokenize-files.ts';
import { readJsonObject, readTextFile, TokenizerError } from './tokenize-files.ts';

/**
 * CLIP's pre-tokenization regex (docs/FLUX_SPEC.md §10.1): contractions, letter runs, single digits,
 * and runs of other non-space characters. Whitespace is never part of a match, so it disappears.
 */
const CLIP_SPLIT_REGEX = "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

/** Reads `vocab.json`: a JSON object of token → non-negative integer id. */
async function readVocab(file: string): Promise<Record<string, number>> {
  const vocab = await readJsonObject(file);
  let count = 0;
  for (const [token, id] of Object.entries(vocab)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new TokenizerError(
        `corrupt vocab file: token ${JSON.stringify(token)} has id ${JSON.stringify(id)}: ${file}`,
        {
          file,
        },
      );
    }
    count++;
  }
  if (count === 0) throw new TokenizerError(`corrupt vocab file (empty): ${file}`, { file });
  return vocab as Record<string, number>;
}

/** Reads `merges.txt`: an optional `#version` header, then one `left right` pair a line. */
async function readMerges(file: string): Promise<[string, string][]> {
  const text = await readTextFile(file);
  const merges: [string, string][] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').replace(/\r$/, '');
    if (line === '' || (i === 0 && line.startsWith('#version'))) continue;
    const parts = line.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new TokenizerError(`corrupt merges file at line ${i + 1}: ${JSON.stringify(line)}: ${file}`, { file });
    }
    merges.push([parts[0] as string, parts[1] as string]);
  }
  if (merges.length === 0) throw new TokenizerError(`corrupt merges file (no merges): ${file}`, { file });
  return merges;
}

/**
 * Builds the `tokenizer.json` object for the CLIP tokenizer folder `dir` (which must hold `vocab.json` and
 * `merges.txt`). Special tokens come from `settings` and their ids from the vocabulary.
 */
export async function buildClipTokenizerJson(
  dir: string,
  settings: TokenizerSettings,
): Promise<Record<string, unknown>> {
  const vocabFile = `${dir}/vocab.json`;
  const vocab = await readVocab(vocabFile);
  const merges = await readMerges(`${dir}/merges.txt`);

  const idOf = (token: string, role: string): number => {
    const id = vocab[token];
    if (id === undefined) {
      throw new TokenizerError(`${role} ${JSON.stringify(token)} is not in the vocabulary: ${vocabFile}`, {
        file: vocabFile,
      });
    }
    return id;
  };
  if (settings.bosToken === undefined) {
    throw new TokenizerError(`CLIP tokenizer declares no bos_token: ${dir}/tokenizer_config.json`, {
      file: `${dir}/tokenizer_config.json`,
    });
  }
  const bosId = idOf(settings.bosToken, 'bos_token');
  const eosId = idOf(settings.eosToken, 'eos_token');
  const padId = idOf(settings.padToken, 'pad_token');
  const unk = settings.unkToken ?? settings.eosToken;
  const unkId = idOf(unk, 'unk_token');

  // Each distinct special token once; they are matched before normalization, like the slow tokenizer's regex.
  const specials = new Map<string, number>([
    [settings.bosToken, bosId],
    [settings.eosToken, eosId],
    [settings.padToken, padId],
    [unk, unkId],
  ]);
  const addedTokens = [...specials].map(([content, id]) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));

  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_SPLIT_REGEX }, behavior: 'Removed', invert: true },
        // The Split above already cut words; ByteLevel only maps bytes to its printable alphabet.
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [settings.eosToken, eosId],
      cls: [settings.bosToken, bosId],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}
