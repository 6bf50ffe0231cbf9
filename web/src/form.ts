/**
 * @file The generation form: reads the controls into a `GenerateImageInput` and shows errors next to the control
 * they concern (the server's `ValidationError.field`, or a client-side check of a number box the browser could
 * not parse). The form is `novalidate`: the server's rules are the only rules, so the page never disagrees.
 */
import { byId } from './dom.ts';
import { readEditInput } from './edit.ts';
import type { GenerateImageInput } from './gql/graphql.ts';
import { selectedLoras } from './lora.ts';

/** Value of the aspect-ratio selector that reveals width/height. */
export const CUSTOM_SIZE = 'custom';

/** Controls that can carry an error, by the input field name the server reports. */
const FIELD_CONTROL: Record<string, string> = {
  prompt: 'prompt',
  mode: 'mode',
  model: 'mode',
  loras: 'lora-fieldset',
  aspectRatio: 'aspectRatio',
  width: 'width',
  height: 'height',
  steps: 'steps',
  guidanceScale: 'guidanceScale',
  seed: 'seed',
  image: 'image',
  strength: 'strength',
  mask: 'mask',
  negativePrompt: 'negativePrompt',
  trueCfgScale: 'trueCfgScale',
};

/** Error slot id of a control (`width` → `width-error`; the LoRA fieldset uses `loras-error`). */
function errorSlotOf(field: string): string {
  return field === 'loras' ? 'loras-error' : `${FIELD_CONTROL[field]}-error`;
}

/** A number box's value: null when empty; throws a field error when the browser could not parse the text. */
function numberOf(id: string): number | null {
  const input = byId(id, HTMLInputElement);
  if (input.validity.badInput) throw new FieldError(id, `${input.labels?.[0]?.textContent ?? id} must be a number`);
  return input.value.trim() === '' ? null : input.valueAsNumber;
}

/** A problem with one field found before sending. */
export class FieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Reads the form (the edit files are read as data URLs, hence async). Always asks for previews: the progress view
 * shows them. The true CFG scale is sent only when it is not 1 (off), so servers without editing accept the rest.
 */
export async function readInput(): Promise<GenerateImageInput> {
  const aspect = byId('aspectRatio', HTMLSelectElement).value;
  const custom = aspect === CUSTOM_SIZE;
  const loras = selectedLoras();
  const trueCfgScale = numberOf('trueCfgScale');
  const edit = await readEditInput();
  return {
    prompt: byId('prompt', HTMLTextAreaElement).value,
    mode: byId('mode', HTMLSelectElement).value || null,
    ...(custom ? { width: numberOf('width'), height: numberOf('height') } : { aspectRatio: aspect || null }),
    steps: numberOf('steps'),
    guidanceScale: numberOf('guidanceScale'),
    seed: numberOf('seed'),
    preview: true,
    // Left out when the page shows no LoRA selector: the server's default set applies.
    ...(loras ? { loras } : {}),
    ...edit,
    ...(trueCfgScale !== null && trueCfgScale !== 1 ? { trueCfgScale } : {}),
  };
}

/** Shows `message` next to the control of `field`; unknown fields go to the form-level slot. Returns the control. */
export function showFieldError(field: string, message: string): HTMLElement | null {
  const controlId = FIELD_CONTROL[field];
  const control = controlId ? document.getElementById(controlId) : null;
  const slot = control ? document.getElementById(errorSlotOf(field)) : null;
  if (!control || !slot) {
    showFormError(message);
    return null;
  }
  // A hidden custom-size box still gets the message where the user will look: reveal it.
  control.closest<HTMLElement>('[data-custom-size]')?.removeAttribute('hidden');
  slot.textContent = message;
  control.setAttribute('aria-invalid', 'true');
  return control;
}

/** Shows a message that concerns no single field (queue full, network, …). */
export function showFormError(message: string): void {
  byId('form-error', HTMLParagraphElement).textContent = message;
}

/** Clears every error message and `aria-invalid`. */
export function clearErrors(): void {
  for (const slot of document.querySelectorAll('#generate-form .field-error')) slot.textContent = '';
  for (const c of document.querySelectorAll('#generate-form [aria-invalid]')) c.removeAttribute('aria-invalid');
}

/** Shows or hides width/height to match the aspect-ratio selector. */
export function syncCustomSize(): void {
  const custom = byId('aspectRatio', HTMLSelectElement).value === CUSTOM_SIZE;
  for (const node of document.querySelectorAll<HTMLElement>('[data-custom-size]')) node.hidden = !custom;
}
