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

/**
 * "XL — 4.18 s on H100 (FLUX.1-dev, published) — Mathematically equivalent network, optimized by the compiler."
 * The published figure is FLUX.1-dev's at 1024x1024, never the served model's (flux-mini is far smaller).
 */
function optionText(m: Model): string {
  const h100 = m.specs.find((s) => s.origin === 'PUBLISHED' && s.hardware === 'H100');
  const latency = h100 ? `${seconds(h100)} on H100 (FLUX.1-dev, published)` : 'latency not published';
  return `${m.mode}${m.isDefault ? ' (default)' : ''} — ${latency} — ${m.description}`;
}

/** Every row of a mode: published 1024x1024 figures, then what this server measured. */
function specSummary(m: Model): string {
  const published = m.specs.filter((s) => s.origin === 'PUBLISHED').map((s) => `${s.hardware} ${seconds(s)}`);
  const measured = m.specs
    .filter((s) => s.origin === 'MEASURED')
    .map((s) => `${s.width}×${s.height}${s.steps ? `, ${s.steps} steps` : ''}: ${seconds(s)}`);
  const parts = [
    `${m.description}`,
    `Published FLUX.1-dev latency (1024×1024, not measured on ${m.name}): ${published.join(' · ') || 'none'}.`,
  ];
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

/**
 * Fills the aspect-ratio selector. On first fill it proposes the model's native size: `1:1` for FLUX.1-dev
 * (1024x1024); for a model trained smaller (flux-mini, 256x256) the custom size, filled in with it.
 */
function fillAspectRatios(limits: Model['limits']): void {
  const select = byId('aspectRatio', HTMLSelectElement);
  const previous = select.value;
  const ratios = limits.aspectRatios;
  select.replaceChildren(
    ...ratios.map((r) => el('option', { value: r }, r)),
    el('option', { value: CUSTOM_SIZE }, 'Custom size…'),
  );
  if (previous && [...ratios, CUSTOM_SIZE].includes(previous)) select.value = previous;
  else if (limits.defaultWidth === 1024 && limits.defaultHeight === 1024 && ratios.includes('1:1'))
    select.value = '1:1';
  else {
    select.value = CUSTOM_SIZE;
    byId('width', HTMLInputElement).value = String(limits.defaultWidth);
    byId('height', HTMLInputElement).value = String(limits.defaultHeight);
  }
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
  fillAspectRatios(chosen.limits);
  applyLimits(chosen);
  // A property, not addEventListener: loading again (after a token change) must not stack handlers.
  select.onchange = () => {
    const m = models.find((x) => x.mode === select.value);
    if (m) applyLimits(m);
  };
}
