/**
 * @file The FLUX tokenizers against diffusers' reference ids (`tokenizer_cases.json`), plus truncation, lengths and
 * file errors. Expected ids are always taken from the reference cases, never written out by hand.
 */

import { readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FluxTokenizers } from '../../../../src/pipeline/flux/tokenize.ts';
import { loadFluxTokenizers, TokenizerError } from '../../../../src/pipeline/flux/tokenize.ts';
import { buildClipTokenizerJson } from '../../../../src/pipeline/flux/tokenize-clip.ts';
import { readTokenizerSettings } from '../../../../src/pipeline/flux/tokenize-files.ts';
import { FIXTURES_DIR, MODEL_DIR } from '../../../helpers/paths.ts';

interface TokenizerCase {
  prompt: string;
  clip_input_ids: number[];
  t5_input_ids: number[];
  t5_unpadded_len: number;
}

const cases = JSON.parse(readFileSync(join(FIXTURES_DIR, 'tokenizer_cases.json'), 'utf8')) as TokenizerCase[];
const caseOf = (prompt: string): TokenizerCase => {
  const c = cases.find((x) => x.prompt === prompt);
  if (!c) throw new Error(`fixture has no case for ${JSON.stringify(prompt)}`);
  return c;
};

// Special ids as the reference produced them for the empty prompt: CLIP [BOS, EOS, PAD...], T5 [EOS, PAD...].
const empty = caseOf('');
const CLIP_BOS = empty.clip_input_ids[0]!;
const CLIP_EOS = empty.clip_input_ids[1]!;
const CLIP_PAD = empty.clip_input_ids[2]!;
const T5_EOS = empty.t5_input_ids[0]!;
const T5_PAD = empty.t5_input_ids[1]!;

/** The reference's T5 content ids (without `</s>` and padding). */
const t5Content = (c: TokenizerCase): number[] => c.t5_input_ids.slice(0, c.t5_unpadded_len - 1);
/** The reference's CLIP content ids (between BOS and the first EOS). */
const clipContent = (c: TokenizerCase): number[] => c.clip_input_ids.slice(1, c.clip_input_ids.indexOf(CLIP_EOS));

/** What HF's `truncation=True, padding="max_length"` gives for content ids. */
function expectedT5(content: number[], length: number): number[] {
  const ids = [...content.slice(0, length - 1), T5_EOS];
  return [...ids, ...Array<number>(length - ids.length).fill(T5_PAD)];
}
function expectedClip(content: number[], length = 77): number[] {
  const ids = [CLIP_BOS, ...content.slice(0, length - 2), CLIP_EOS];
  return [...ids, ...Array<number>(length - ids.length).fill(CLIP_PAD)];
}

const rows = (ids: BigInt64Array, width: number): number[][] => {
  expect(ids.length % width).toBe(0);
  const out: number[][] = [];
  for (let i = 0; i < ids.length; i += width) out.push(Array.from(ids.subarray(i, i + width), Number));
  return out;
};

let tok: FluxTokenizers;
let scratch: string;

beforeAll(async () => {
  tok = await loadFluxTokenizers(MODEL_DIR);
  scratch = await mkdtemp(join(tmpdir(), 'fluxql-tokenize-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('reference cases (diffusers FluxPipeline tokenization)', () => {
  it('has the fixture cases', () => {
    expect(cases.length).toBe(30);
  });

  it.each(cases.map((c, i) => [i, c] as const))('case %i: CLIP ids match exactly', (_i, c) => {
    const ids = tok.encodeClip([c.prompt]);
    expect(ids).toBeInstanceOf(BigInt64Array);
    expect(rows(ids, 77)).toEqual([c.clip_input_ids]);
  });

  it.each(cases.map((c, i) => [i, c] as const))('case %i: T5 ids (512) match exactly', (_i, c) => {
    const ids = tok.encodeT5([c.prompt]);
    expect(ids).toBeInstanceOf(BigInt64Array);
    expect(rows(ids, 512)).toEqual([c.t5_input_ids]);
  });

  it('encodes a whole batch row-major [B, L]', () => {
    const prompts = cases.map((c) => c.prompt);
    expect(rows(tok.encodeClip(prompts), 77)).toEqual(cases.map((c) => c.clip_input_ids));
    expect(rows(tok.encodeT5(prompts), 512)).toEqual(cases.map((c) => c.t5_input_ids));
    expect(tok.encodeClip([]).length).toBe(0);
  });

  it.each([64, 256])('T5 with maxSequenceLength %i truncates every case keeping </s> last', (len) => {
    const out = rows(
      tok.encodeT5(
        cases.map((c) => c.prompt),
        len,
      ),
      len,
    );
    cases.forEach((c, b) => {
      expect(out[b]).toEqual(expectedT5(t5Content(c), len));
    });
    // The longest case is cut: the end token takes the last slot instead of a content token.
    const longest = cases.reduce((a, b) => (b.t5_unpadded_len > a.t5_unpadded_len ? b : a));
    expect(longest.t5_unpadded_len).toBeGreaterThan(256);
    expect(out[cases.indexOf(longest)]?.[len - 1]).toBe(T5_EOS);
  });

  it('reports the lengths from the tokenizer configs', () => {
    expect(tok.clipLength).toBe(empty.clip_input_ids.length);
    expect(tok.t5MaxLength).toBe(empty.t5_input_ids.length);
    expect(tok.defaultT5Length).toBe(512);
  });
});

describe('truncation and edge cases', () => {
  // Repeating a reference prompt: both tokenizers split on spaces, so the ids repeat the reference content.
  const base = caseOf('A painting of a squirrel eating a burger');
  const copies = 100;
  const longPrompt = Array<string>(copies).fill(base.prompt).join(' ');
  const repeated = (content: number[]): number[] => Array.from({ length: copies }, () => content).flat();

  it('truncates a very long prompt for CLIP to 77, BOS first and EOS last', () => {
    const [row] = rows(tok.encodeClip([longPrompt]), 77);
    expect(row).toEqual(expectedClip(repeated(clipContent(base))));
    expect(row?.[0]).toBe(CLIP_BOS);
    expect(row?.[76]).toBe(CLIP_EOS);
  });

  it.each([512, 256, 64, 1])('truncates a very long prompt for T5 to %i with </s> last', (len) => {
    expect(repeated(t5Content(base)).length).toBeGreaterThan(512);
    const [row] = rows(tok.encodeT5([longPrompt], len), len);
    expect(row).toEqual(expectedT5(repeated(t5Content(base)), len));
    expect(row?.[len - 1]).toBe(T5_EOS);
  });

  it('encodes an empty prompt as only the special tokens plus padding', () => {
    expect(rows(tok.encodeClip(['']), 77)).toEqual([expectedClip([])]);
    expect(rows(tok.encodeT5([''], 64), 64)).toEqual([expectedT5([], 64)]);
  });

  it('encodes unicode and emoji without falling back to unknown tokens, NFC and NFD alike', () => {
    const c = caseOf('日本語のテキスト and emoji 🐱🍌');
    expect(rows(tok.encodeClip([c.prompt]), 77)).toEqual([c.clip_input_ids]);
    // CLIP's unknown token is its EOS: an emoji must become byte-level pieces, not EOS.
    expect(clipContent(c)).not.toContain(CLIP_EOS);
    const composed = caseOf("café naïve résumé — “quotes” and ‘apostrophes’ don't");
    const decomposed = composed.prompt.normalize('NFD');
    expect(decomposed).not.toBe(composed.prompt);
    expect(rows(tok.encodeClip([decomposed]), 77)).toEqual([composed.clip_input_ids]);
    expect(rows(tok.encodeT5([decomposed]), 512)).toEqual([composed.t5_input_ids]);
  });

  it('rejects a maxSequenceLength outside 1…512 naming the parameter', () => {
    for (const bad of [0, 513, 1.5, Number.NaN]) {
      const err = (() => {
        try {
          tok.encodeT5(['x'], bad);
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(TokenizerError);
      expect((err as TokenizerError).param).toBe('maxSequenceLength');
    }
  });

  it('loads once per model folder', async () => {
    expect(await loadFluxTokenizers(MODEL_DIR)).toBe(tok);
    expect(await loadFluxTokenizers({ clip: join(MODEL_DIR, 'tokenizer'), t5: join(MODEL_DIR, 'tokenizer_2') })).toBe(
      tok,
    );
  });
});

describe('tokenizer files', () => {
  /** Copies the model's two tokenizer folders into a fresh repo dir, minus `omit` (paths relative to the repo). */
  async function copyModel(name: string, omit: string[] = []): Promise<string> {
    const root = join(scratch, name);
    const files = {
      tokenizer: ['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'],
      tokenizer_2: ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'],
    };
    for (const [dir, names] of Object.entries(files)) {
      await mkdir(join(root, dir), { recursive: true });
      for (const f of names) {
        if (!omit.includes(`${dir}/${f}`)) await copyFile(join(MODEL_DIR, dir, f), join(root, dir, f));
      }
    }
    return root;
  }

  async function loadError(root: string): Promise<TokenizerError> {
    const err = await loadFluxTokenizers(root).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TokenizerError);
    return err as TokenizerError;
  }

  it('names a missing CLIP vocab file', async () => {
    const root = await copyModel('no-vocab', ['tokenizer/vocab.json']);
    const err = await loadError(root);
    expect(err.file).toBe(join(root, 'tokenizer/vocab.json'));
    expect(err.message).toContain('vocab.json');
  });

  it('names a missing merges file and a missing T5 tokenizer.json', async () => {
    const noMerges = await copyModel('no-merges', ['tokenizer/merges.txt']);
    expect((await loadError(noMerges)).file).toBe(join(noMerges, 'tokenizer/merges.txt'));
    const noT5 = await copyModel('no-t5', ['tokenizer_2/tokenizer.json']);
    expect((await loadError(noT5)).file).toBe(join(noT5, 'tokenizer_2/tokenizer.json'));
  });

  it('names corrupt files', async () => {
    const root = await copyModel('corrupt');
    await writeFile(join(root, 'tokenizer_2/tokenizer.json'), '{"model": ');
    expect((await loadError(root)).file).toBe(join(root, 'tokenizer_2/tokenizer.json'));

    const badMerges = await copyModel('bad-merges');
    await writeFile(join(badMerges, 'tokenizer/merges.txt'), '#version: 0.2\ni n\nthis line has three\n');
    const err = await loadError(badMerges);
    expect(err.file).toBe(join(badMerges, 'tokenizer/merges.txt'));
    expect(err.message).toContain('line 3');

    const badVocab = await copyModel('bad-vocab');
    await writeFile(join(badVocab, 'tokenizer/vocab.json'), '{"a</w>": "one"}');
    expect((await loadError(badVocab)).file).toBe(join(badVocab, 'tokenizer/vocab.json'));
  });

  it('names a config whose eos_token is not in the vocabulary', async () => {
    const root = await copyModel('bad-eos', ['tokenizer/special_tokens_map.json']);
    const configFile = join(root, 'tokenizer/tokenizer_config.json');
    const config = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    await writeFile(configFile, JSON.stringify({ ...config, eos_token: '<|no-such-token|>' }));
    const err = await loadError(root);
    expect(err.file).toBe(join(root, 'tokenizer/vocab.json'));
    expect(err.message).toContain('<|no-such-token|>');
  });

  it('a failed load is not cached: fixing the file lets it load', async () => {
    const root = await copyModel('fixable', ['tokenizer/vocab.json']);
    await loadError(root);
    await copyFile(join(MODEL_DIR, 'tokenizer/vocab.json'), join(root, 'tokenizer/vocab.json'));
    const fixed = await loadFluxTokenizers(root);
    const first = cases[0]!;
    expect(rows(fixed.encodeClip([first.prompt]), 77)).toEqual([first.clip_input_ids]);
  });

  it('uses a CLIP tokenizer.json when the folder has one', async () => {
    const root = await copyModel('clip-json', ['tokenizer/vocab.json', 'tokenizer/merges.txt']);
    const clipDir = join(MODEL_DIR, 'tokenizer');
    const json = await buildClipTokenizerJson(clipDir, await readTokenizerSettings(clipDir));
    await writeFile(join(root, 'tokenizer/tokenizer.json'), JSON.stringify(json));
    const fromJson = await loadFluxTokenizers(root);
    expect(rows(fromJson.encodeClip(cases.map((c) => c.prompt)), 77)).toEqual(cases.map((c) => c.clip_input_ids));
  });

  it('takes a smaller T5 model_max_length as the default length (flux-mini declares 32), and refuses longer', async () => {
    const root = await copyModel('t5-32');
    const cfgPath = join(root, 'tokenizer_2/tokenizer_config.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    await writeFile(cfgPath, JSON.stringify({ ...cfg, model_max_length: 32 }));
    const short = await loadFluxTokenizers(root);
    expect(short.t5MaxLength).toBe(32);
    expect(short.defaultT5Length).toBe(32);
    const c = cases.find((x) => x.t5_unpadded_len < 32)!;
    expect(rows(short.encodeT5([c.prompt]), 32)).toEqual([c.t5_input_ids.slice(0, 32)]);
    expect(() => short.encodeT5([c.prompt], 64)).toThrow(TokenizerError);
  });
});
