/**
 * @file The caption grammar flux-mini is trained on (issue 14; tools/train-mini/grammar.json is the training side's
 * copy, and a unit test keeps the two equal): `a {color} {shape} on a {bg} background[ in the {position}][, {size}]`.
 * Captions are enumerated in the same fixed order as tools/train-mini/grammar.py (object color, background color
 * != object, shape, position with "none" first, size with "none" first: 8 * 7 * 3 * 6 * 3 = 3024), so an index means
 * the same caption on both sides.
 */

/** sRGB of every color word, in grammar order. */
export const COLORS = {
  red: [220, 40, 40],
  green: [40, 180, 60],
  blue: [40, 80, 220],
  yellow: [240, 210, 40],
  orange: [245, 140, 30],
  purple: [140, 60, 200],
  white: [245, 245, 245],
  black: [20, 20, 20],
} as const satisfies Record<string, readonly [number, number, number]>;

export type ColorName = keyof typeof COLORS;
export const COLOR_NAMES = Object.keys(COLORS) as ColorName[];
export const SHAPES = ['circle', 'square', 'triangle'] as const;
export type ShapeName = (typeof SHAPES)[number];
export const POSITIONS = ['center', 'top left', 'top right', 'bottom left', 'bottom right'] as const;
export type PositionName = (typeof POSITIONS)[number];
export const SIZES = ['small', 'large'] as const;
export type SizeName = (typeof SIZES)[number];

/** Object side as a fraction of the image side, per size word ("any" when the caption names none). */
export const SIDE_RANGE = { any: [0.3, 0.6], small: [0.3, 0.4], large: [0.5, 0.6] } as const;
/** Object centre (fractions of width, height) per position word. */
export const POSITION_CENTERS: Record<PositionName, readonly [number, number]> = {
  center: [0.5, 0.5],
  'top left': [0.3, 0.3],
  'top right': [0.7, 0.3],
  'bottom left': [0.3, 0.7],
  'bottom right': [0.7, 0.7],
};
/** Uniform jitter of the centre (fraction of the side) and of each color channel (0-255). */
export const POSITION_JITTER = 0.03;
export const COLOR_JITTER = 8;

/** What one caption asks for; position and size are optional in the grammar. */
export interface CaptionAttributes {
  color: ColorName;
  background: ColorName;
  shape: ShapeName;
  position: PositionName | null;
  size: SizeName | null;
}

/** The caption text of `a`. */
export function caption(a: CaptionAttributes): string {
  let s = `a ${a.color} ${a.shape} on a ${a.background} background`;
  if (a.position) s += ` in the ${a.position}`;
  if (a.size) s += `, ${a.size}`;
  return s;
}

/** Every caption of the grammar, in the training side's canonical order. */
export function allCaptions(): CaptionAttributes[] {
  const out: CaptionAttributes[] = [];
  for (const color of COLOR_NAMES)
    for (const background of COLOR_NAMES) {
      if (background === color) continue;
      for (const shape of SHAPES)
        for (const position of [null, ...POSITIONS])
          for (const size of [null, ...SIZES]) out.push({ color, background, shape, position, size });
    }
  return out;
}

/** Parses a caption of the grammar; null for any other text. */
export function parseCaption(text: string): CaptionAttributes | null {
  const c = COLOR_NAMES.join('|');
  const re = new RegExp(
    `^a (${c}) (${SHAPES.join('|')}) on a (${c}) background(?: in the (${POSITIONS.join('|')}))?(?:, (${SIZES.join('|')}))?$`,
  );
  const m = re.exec(text.trim().toLowerCase());
  if (!m || m[1] === m[3]) return null;
  return {
    color: m[1] as ColorName,
    shape: m[2] as ShapeName,
    background: m[3] as ColorName,
    position: (m[4] as PositionName | undefined) ?? null,
    size: (m[5] as SizeName | undefined) ?? null,
  };
}

/** mulberry32: a small seeded PRNG, so prompt sets and test renders are the same on every machine. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `n` distinct captions drawn deterministically from the grammar (a seeded shuffle of the canonical order), e.g.
 * the benchmark's fixed prompt set. Different seeds give different sets, so tests and benchmarks can hold out theirs.
 */
export function sampleCaptions(n: number, seed: number): CaptionAttributes[] {
  const all = allCaptions();
  const rand = seededRandom(seed);
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, n);
}
