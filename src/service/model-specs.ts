/**
 * @file Published latency of TheStage's Elastic FLUX.1-dev tiers, as stated on the seed model card, and the
 * aspect-ratio table of that card. Data only: the `models` query shows it next to what this server measured.
 *
 * Source: https://huggingface.co/TheStageAI/Elastic-FLUX.1-dev (README "Latency (in seconds) for generating a
 * 1024x1024 image using different model sizes"), revision 5c8f62f. The card's column order is S, M, L, XL,
 * Original (fastest first; the numbers are monotone in that order on H100 and L40s). Cells the card marks
 * "N/A" are `null` here; nothing is filled in by us. Another revision of the card gives 5.79 s for S on the
 * RTX 5090; we keep the revision cited above.
 */

import { MODE_NAMES, sizeOfMode } from '../shared/vocabulary/index.ts';

/** Where a published number comes from. */
export const PUBLISHED_SPEC_SOURCE =
  'FLUX.1-dev (12B) as published, not measured on the served model: ' +
  'https://huggingface.co/TheStageAI/Elastic-FLUX.1-dev (model card, latency table, revision 5c8f62f)';

/** One published cell: seconds for one 1024x1024 image on `gpu` in `mode`; `null` when the card says N/A. */
export interface PublishedLatency {
  gpu: string;
  mode: string;
  latencySeconds: number | null;
}

const GPUS = ['H100', 'L40s', 'B200', 'RTX 5090'] as const;
// Rows in GPUS order, columns in MODE_NAMES order (original, XL, L, M, S: the card's columns reversed).
const TABLE: (number | null)[][] = [
  [6.46, 4.18, 3.25, 3.06, 2.88],
  [16, 14.39, 10.67, 10.07, 9.22],
  [4.4, 2.13, 2.22, 2.09, 1.96],
  [null, null, null, null, 5.53],
];

/** The published latency of every GPU for one mode (case-insensitive), in GPU order. */
export function publishedLatencies(mode: string): PublishedLatency[] {
  const col = MODE_NAMES.findIndex((m) => sizeOfMode(m) === sizeOfMode(mode));
  if (col < 0) return [];
  return GPUS.map((gpu, row) => ({ gpu, mode: MODE_NAMES[col] as string, latencySeconds: TABLE[row]?.[col] ?? null }));
}

/** The seed card's aspect ratios and the pixel size each maps to. */
export const ASPECT_RATIOS: Readonly<Record<string, { width: number; height: number }>> = Object.freeze({
  '1:1': { width: 1024, height: 1024 },
  '16:9': { width: 1280, height: 736 },
  '21:9': { width: 1280, height: 544 },
  '3:2': { width: 1248, height: 832 },
  '2:3': { width: 832, height: 1248 },
  '4:3': { width: 1184, height: 896 },
  '3:4': { width: 896, height: 1184 },
  '5:4': { width: 1152, height: 928 },
  '4:5': { width: 928, height: 1152 },
  '9:16': { width: 736, height: 1280 },
  '9:21': { width: 544, height: 1280 },
});

/** Tier descriptions from the seed card (quality loss bounds as stated there). */
export const MODE_DESCRIPTIONS: Readonly<Record<string, string>> = Object.freeze({
  original: 'The original FLUX.1-dev weights, no compression.',
  xl: 'Mathematically equivalent network, optimized by the compiler.',
  l: 'Near lossless: under 1% degradation on the card benchmarks.',
  m: 'Faster: under 1.5% degradation on the card benchmarks.',
  s: 'Fastest: under 2% degradation on the card benchmarks.',
});
