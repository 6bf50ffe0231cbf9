/**
 * @file LoRA selector: one row per LoRA file from the `loras` query, each with a "use" checkbox and a strength;
 * the chosen ones go into `generateImage` as `loras: [{ name, strength }]`.
 *
 * The LoRA API is landing separately, so its query is not a codegen document (codegen would reject it against a
 * schema without `loras`). Instead `vite.config.ts` checks `schema/schema.graphql` at build time and sets
 * `__LORA_QUERY__` (name plus the descriptive scalar fields the schema has); with no `loras` query it is null, this
 * module does nothing and the fieldset stays hidden.
 */
import { request } from './api.ts';
import { byId, el } from './dom.ts';
import { TypedDocumentString } from './gql/graphql.ts';

/** A LoRA file as listed by the server: `name` plus whatever descriptive fields the build picked. */
type LoraFile = { name: string } & Record<string, string | number | boolean | null>;

const enabled = __LORA_QUERY__ !== null;

/** Fills the selector; leaves it hidden when the server has no LoRA API or no LoRA files. */
export async function loadLoras(): Promise<void> {
  if (!__LORA_QUERY__) return;
  const doc = new TypedDocumentString<{ loras: LoraFile[] }, Record<string, never>>(__LORA_QUERY__);
  const { loras } = await request(doc, {});
  const list = byId('lora-list', HTMLDivElement);
  list.replaceChildren(...loras.map(loraRow));
  byId('lora-fieldset', HTMLFieldSetElement).hidden = loras.length === 0;
}

function loraRow(lora: LoraFile, i: number): HTMLDivElement {
  const row = el('div', { class: 'lora-row', 'data-lora': lora.name });
  const use = el('input', { id: `lora-use-${i}`, type: 'checkbox' });
  const details = Object.entries(lora)
    .filter(([k, v]) => k !== 'name' && v != null)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const strength = el('input', { id: `lora-strength-${i}`, type: 'number', step: '0.05', value: '1' });
  row.append(
    use,
    el('label', { for: use.id }, details ? `${lora.name} (${details})` : lora.name),
    el('label', { for: strength.id }, 'Strength'),
    strength,
  );
  return row;
}

/** The chosen LoRAs, or null when the server has no LoRA API (so the key is left out of the request). */
export function selectedLoras(): { name: string; strength: number }[] | null {
  if (!enabled) return null;
  return [...document.querySelectorAll<HTMLDivElement>('#lora-list .lora-row')].flatMap((row) => {
    const [use, strength] = row.querySelectorAll('input');
    if (!use?.checked || !strength) return [];
    return [
      { name: row.dataset.lora ?? '', strength: Number.isNaN(strength.valueAsNumber) ? 1 : strength.valueAsNumber },
    ];
  });
}
