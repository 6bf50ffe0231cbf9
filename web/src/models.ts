/**
 * @file The mode selector, filled from the `models` query. Each option states the mode's published latency (the
 * seed card's H100 figure for 1024x1024) and its quality figure (the card's degradation bound, in the mode's
 * description); the line under the selector lists every published and measured row of the chosen mode.
 * The chosen mode's limits also set the hints and bounds of the size, steps and guidance boxes.
 */
import { request } from './api.ts';
import { byId, el, formatDuration } from './dom.ts';
import { CUSTOM_SIZE, syncCustomSize } from './form.ts';
import type { WebModelsQuery } from './gql/graphql.ts';
import { WebModelsQuery as ModelsDoc } from './operations.ts';

type Model = WebModelsQuery['models'][number];
type Spec = Model['specs'][number];

let models: Model[] = [];

/** Published figures exactly as the card states them (4.18 s); measured ones rounded for reading. */
function seconds(spec: Spec): string {
  if (spec.latencySeconds == null) return 'n/a';
  return spec.origin === 'PUBLISHED' ? `${spec.latencySeconds} s` : formatDuration(spec.latencySeconds * 1000);
}

/** "XL — 4.18 s on H100 — Mathematically equivalent network, optimized by the compiler." */
function optionText(m: Model): string {
  const h100 = m.specs.find((s) => s.origin === 'PUBLISHED' && s.hardware === 'H100');
  const latency = h100 ? `${seconds(h100)} on H100` : 'latency not published';
  return `${m.mode}${m.isDefault ? ' (default)' : ''} — ${latency} — ${m.description}`;
}

/** Every row of a mode: published 1024x1024 figures, then what this server measured. */
function specSummary(m: Model): string {
  const published = m.specs.filter((s) => s.origin === 'PUBLISHED').map((s) => `${s.hardware} ${seconds(s)}`);
  const measured = m.specs
    .filter((s) => s.origin === 'MEASURED')
    .map((s) => `${s.width}×${s.height}${s.steps ? `, ${s.steps} steps` : ''}: ${seconds(s)}`);
  const parts = [`${m.description}`, `Published latency (1024×1024): ${published.join(' · ') || 'none'}.`];
  if (m.quality && m.mode !== 'original') {
    parts.push(
      `Measured quality vs original: PSNR ${m.quality.psnr.toFixed(1)} dB, SSIM ${m.quality.ssim.toFixed(4)}.`,
    );
  }
  parts.push(measured.length ? `Measured here on ${m.device}: ${measured.join(' · ')}.` : `Not measured here yet.`);
  return `${m.name}: ${parts.join(' ')}`;
}

function applyLimits(m: Model): void {
  const { limits } = m;
  byId('mode-info', HTMLParagraphElement).textContent = specSummary(m);
  for (const id of ['width', 'height']) {
    const input = byId(id, HTMLInputElement);
    Object.assign(input, {
      min: String(limits.minSide),
      max: String(limits.maxSide),
      step: String(limits.sideMultiple),
    });
  }
  byId('size-hint', HTMLParagraphElement).textContent =
    `Width and height: ${limits.minSide}–${limits.maxSide}, multiples of ${limits.sideMultiple}.`;
  Object.assign(byId('steps', HTMLInputElement), { min: String(limits.minSteps), max: String(limits.maxSteps) });
  Object.assign(byId('guidanceScale', HTMLInputElement), {
    min: String(limits.minGuidance),
    max: String(limits.maxGuidance),
  });
}

function fillAspectRatios(ratios: readonly string[]): void {
  const select = byId('aspectRatio', HTMLSelectElement);
  const previous = select.value;
  select.replaceChildren(
    ...ratios.map((r) => el('option', { value: r }, r)),
    el('option', { value: CUSTOM_SIZE }, 'Custom size…'),
  );
  select.value = previous && [...ratios, CUSTOM_SIZE].includes(previous) ? previous : (ratios[0] ?? CUSTOM_SIZE);
  syncCustomSize();
}

/** Loads the modes into the selector (default mode selected) and wires limit updates. */
export async function loadModels(): Promise<void> {
  ({ models } = await request(ModelsDoc, {}));
  const select = byId('mode', HTMLSelectElement);
  select.replaceChildren(...models.map((m) => el('option', { value: m.mode }, optionText(m))));
  const chosen = models.find((m) => m.isDefault) ?? models[0];
  if (!chosen) return;
  select.value = chosen.mode;
  fillAspectRatios(chosen.limits.aspectRatios);
  applyLimits(chosen);
  // A property, not addEventListener: loading again (after a token change) must not stack handlers.
  select.onchange = () => {
    const m = models.find((x) => x.mode === select.value);
    if (m) applyLimits(m);
  };
}
