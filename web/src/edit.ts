/**
 * @file The "Edit an image" part of the form: input image (img2img), strength, mask (inpainting), negative prompt and
 * true CFG scale. Files are sent inline as `data:` URLs, one of the forms `generateImage` takes for `image`/`mask`
 * (the server decodes them, checks the limits and answers a ValidationError on the field otherwise).
 */
import { byId } from './dom.ts';
import type { GenerateImageInput } from './gql/graphql.ts';

/** The edit fields of a request this module reads; empty when no image, mask or negative prompt was given. */
export type EditInput = Pick<GenerateImageInput, 'image' | 'mask' | 'strength' | 'negativePrompt'>;

/** The chosen file of a file input as a `data:` URL, or null when none is chosen. */
function dataUrlOf(id: string): Promise<string | null> {
  const file = byId(id, HTMLInputElement).files?.[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result as string);
    reader.onerror = () => reject(reader.error ?? new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

/**
 * Reads the edit files and the negative prompt (the true CFG scale is a number box: `form.ts` reads it). Strength
 * goes only with an image; a mask is sent whenever chosen, so a mask without an image gets the server's error.
 */
export async function readEditInput(): Promise<EditInput> {
  const [image, mask] = await Promise.all([dataUrlOf('image'), dataUrlOf('mask')]);
  const negative = byId('negativePrompt', HTMLInputElement).value.trim();
  return {
    ...(image ? { image, strength: byId('strength', HTMLInputElement).valueAsNumber } : {}),
    ...(mask ? { mask } : {}),
    ...(negative ? { negativePrompt: negative } : {}),
  };
}

/** Keeps the number next to the strength slider in step with it. */
export function watchStrength(): void {
  const slider = byId('strength', HTMLInputElement);
  const output = byId('strength-value', HTMLOutputElement);
  const sync = () => {
    output.value = slider.value;
  };
  slider.addEventListener('input', sync);
  sync();
}
