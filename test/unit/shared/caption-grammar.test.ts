/**
 * The caption grammar and its detector (issue 14): the TS grammar equals the training side's grammar.json, and the
 * detector judges every clean render right (all 3024 captions at 128x128, a fixed sample and the close color pairs
 * at 256x256).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { accuracy, detect, judge, judgeDetection } from '../../../src/shared/caption-grammar/detector.ts';
import {
  allCaptions,
  type CaptionAttributes,
  COLOR_JITTER,
  COLORS,
  caption,
  POSITION_CENTERS,
  POSITION_JITTER,
  POSITIONS,
  parseCaption,
  SHAPES,
  SIDE_RANGE,
  SIZES,
  sampleCaptions,
} from '../../../src/shared/caption-grammar/grammar.ts';
import { renderCaption } from '../../../src/shared/caption-grammar/render.ts';
import { REPO_ROOT } from '../../helpers/paths.ts';

function judgeAll(captions: CaptionAttributes[], size: number, seed0: number) {
  return captions.map((a, i) => {
    const d = detect(renderCaption(a, seed0 + i, size));
    return { a, d, j: judgeDetection(d, a) };
  });
}

function wrong(results: ReturnType<typeof judgeAll>): string[] {
  return results
    .filter((r) => Object.values(r.j).some((v) => v === false))
    .map((r) => `${caption(r.a)} -> ${JSON.stringify(r.d)}`);
}

describe('caption grammar', () => {
  it('equals tools/train-mini/grammar.json (the training side)', () => {
    const g = JSON.parse(readFileSync(join(REPO_ROOT, 'tools/train-mini/grammar.json'), 'utf8'));
    expect(COLORS).toEqual(g.colors);
    expect(Object.keys(COLORS)).toEqual(Object.keys(g.colors));
    expect(SHAPES).toEqual(g.shapes);
    expect(POSITIONS).toEqual(g.positions);
    expect(SIZES).toEqual(g.sizes);
    expect(SIDE_RANGE).toEqual(g.side_range);
    expect(POSITION_CENTERS).toEqual(g.position_centers);
    expect([POSITION_JITTER, COLOR_JITTER]).toEqual([g.position_jitter, g.color_jitter]);
  });

  it('enumerates the 3024 captions in grammar.py order and parses each back', () => {
    const all = allCaptions();
    expect(all).toHaveLength(3024);
    expect(caption(all[0]!)).toBe('a red circle on a green background');
    expect(caption(all[1]!)).toBe('a red circle on a green background, small');
    expect(caption(all.at(-1)!)).toBe('a black triangle on a white background in the bottom right, large');
    for (const a of all) expect(parseCaption(caption(a))).toEqual(a);
    expect(parseCaption('a red circle on a red background')).toBeNull();
    expect(parseCaption('a kitten eating a banana')).toBeNull();
  });

  it('samples distinct captions deterministically, different per seed', () => {
    const a = sampleCaptions(48, 14).map(caption);
    expect(new Set(a).size).toBe(48);
    expect(sampleCaptions(48, 14).map(caption)).toEqual(a);
    expect(sampleCaptions(48, 15).map(caption)).not.toEqual(a);
  });
});

describe('detector on clean renders', () => {
  it('judges all 3024 captions right at 128x128', () => {
    const r = judgeAll(allCaptions(), 128, 1);
    expect(wrong(r)).toEqual([]);
    const acc = accuracy(r.map((x) => x.j));
    expect(acc.background).toEqual({ right: 3024, asked: 3024, accuracy: 1 });
    expect(acc.position?.asked).toBe(2520);
    expect(acc.size?.asked).toBe(2016);
  });

  it('judges a fixed sample of 400 captions right at 256x256', () => {
    expect(wrong(judgeAll(sampleCaptions(400, 256), 256, 5000))).toEqual([]);
  });

  it('tells the close colors apart (yellow/orange, white/yellow) in every shape, size and position', () => {
    const pairs = [
      ['yellow', 'orange'],
      ['orange', 'yellow'],
      ['white', 'yellow'],
      ['yellow', 'white'],
      ['orange', 'red'],
      ['red', 'orange'],
    ] as const;
    const tricky = allCaptions().filter((a) => pairs.some(([c, b]) => a.color === c && a.background === b));
    expect(tricky).toHaveLength(pairs.length * 54);
    for (const size of [128, 256]) expect(wrong(judgeAll(tricky, size, 90_000 + size))).toEqual([]);
  });

  it('finds no object on a flat image and reports the wrong attribute when the image disagrees', () => {
    const flat = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(20) };
    expect(detect(flat)).toMatchObject({ background: 'black', color: null, shape: null });
    const img = renderCaption(
      { color: 'red', background: 'blue', shape: 'square', position: 'top left', size: 'large' },
      3,
      128,
    );
    expect(
      judge(img, { color: 'green', background: 'blue', shape: 'circle', position: 'bottom right', size: 'small' }),
    ).toEqual({
      background: true,
      color: false,
      shape: false,
      position: false,
      size: false,
    });
  });
});
