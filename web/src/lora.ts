/**
 * @file LoRA selector: one row per usable LoRA file from the `loras` query, each with a "use" checkbox and a
 * strength; the chosen ones go into `generateImage` as `loras: [{ name, strength }]`. Members of the server-wide
 * default set start checked at their strength, so what the form shows is exactly what a generation uses (an empty
 * choice sends `[]`: no LoRA). Files the model cannot use are not listed. Where the server lists no LoRAs (no
 * LORA_DIR, or a scale-out API node) the fieldset stays hidden and requests leave `loras` out.
 */
import { request } from './api.ts';
import { byId, el } from './dom.ts';
import type { WebLorasQuery as WebLorasResult } from './gql/graphql.ts';
import { WebLorasQuery } from './operations.ts';

type LorasData = Extract<WebLorasResult['loras'], { __typename: 'QueryLorasSuccess' }>['data'];
type LoraFile = Extract<LorasData[number], { __typename: 'LoraFile' }>;

/** Whether the selector is showing (the server has usable LoRA files). */
let listed = false;

/** Fills the selector; leaves it hidden when the server has no LoRA API answer or no usable LoRA files. */
export async function loadLoras(): Promise<void> {
  const { loras } = await request(WebLorasQuery, {});
  const files =
    loras.__typename === 'QueryLorasSuccess' ? loras.data.flatMap((l) => (l.__typename === 'LoraFile' ? [l] : [])) : [];
  byId('lora-list', HTMLDivElement).replaceChildren(...files.map(loraRow));
  listed = files.length > 0;
  byId('lora-fieldset', HTMLFieldSetElement).hidden = !listed;
}

function loraRow(lora: LoraFile, i: number): HTMLDivElement {
  const row = el('div', { class: 'lora-row', 'data-lora': lora.name });
  const use = el('input', { id: `lora-use-${i}`, type: 'checkbox' });
  use.checked = lora.strength != null;
  const details = `${lora.format.toLowerCase()}, rank ${lora.rank}, ${formatBytes(lora.sizeBytes)}`;
  const strength = el('input', {
    id: `lora-strength-${i}`,
    type: 'number',
    step: '0.05',
    value: String(lora.strength ?? 1),
  });
  row.append(
    use,
    el('label', { for: use.id }, `${lora.name} (${details})`),
    el('label', { for: strength.id }, 'Strength'),
    strength,
  );
  return row;
}

function formatBytes(n: number): string {
  return n >= 1024 * 1024 ? `${(n / (1024 * 1024)).toFixed(1)} MiB` : `${Math.max(1, Math.round(n / 1024))} KiB`;
}

/** The chosen LoRAs (possibly none), or null when no selector is shown (the request then leaves `loras` out). */
export function selectedLoras(): { name: string; strength: number }[] | null {
  if (!listed) return null;
  return [...document.querySelectorAll<HTMLDivElement>('#lora-list .lora-row')].flatMap((row) => {
    const [use, strength] = row.querySelectorAll('input');
    if (!use?.checked || !strength) return [];
    return [
      { name: row.dataset.lora ?? '', strength: Number.isNaN(strength.valueAsNumber) ? 1 : strength.valueAsNumber },
    ];
  });
}
