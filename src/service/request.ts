/**
 * @file Validation of a generation request, shared by every transport. The input is the canonical camelCase
 * shape (GraphQL uses it as is; REST maps snake_case onto it); the output is a fully defaulted
 * {@link GenerationRequest}. The first problem becomes a {@link ValidationError} naming the field.
 */
import { randomInt } from 'node:crypto';
import { z } from 'zod';
import { ValidationError } from './errors.ts';
import { IMAGE_FORMATS, type ImageFormat } from './media/image-codec.ts';
import { ASPECT_RATIOS } from './model-specs.ts';
import type { GenerationLimits, ModelCatalog, ModelEntry } from './models.ts';
import { type LoraSelection, loraFileName, loraStrengthProblem, MAX_LORA_STRENGTH } from './pipeline.ts';

/** LoRAs one request may combine. */
export const MAX_LORAS_PER_REQUEST = 8;
export { MAX_LORA_STRENGTH };
/** Longest LoRA name (a path relative to LORA_DIR). */
export const MAX_LORA_NAME_CHARS = 500;
/** Largest control image file (upload, base64 payload or download), in bytes. */
export const MAX_CONTROL_IMAGE_BYTES = 10 * 1024 * 1024;
/** Largest decoded control image, in pixels (4096×4096; it is resized to the output size). */
export const MAX_CONTROL_IMAGE_PIXELS = 4096 * 4096;
/** Longest `controlImage` text: the base64 of {@link MAX_CONTROL_IMAGE_BYTES} plus room for a data URL prefix. */
export const MAX_CONTROL_IMAGE_CHARS = Math.ceil(MAX_CONTROL_IMAGE_BYTES / 3) * 4 + 1024;

/** A generation request as a client sends it; `null` means "not given" (GraphQL nullable inputs). */
export interface GenerateInput {
  prompt: string;
  /** Model id (`flux-1-dev-s-bs4`), or a bare mode. */
  model?: string | null;
  /** Mode (`original`, `XL`, …); an alternative to `model`. */
  mode?: string | null;
  seed?: number | null;
  /** One of {@link ASPECT_RATIOS}; excludes width/height. */
  aspectRatio?: string | null;
  width?: number | null;
  height?: number | null;
  /** @default 28 */
  steps?: number | null;
  /** @default 3.5 */
  guidanceScale?: number | null;
  /** @default 1 */
  numImages?: number | null;
  /** @default 'webp' */
  outputFormat?: ImageFormat | null;
  /** Lossy quality 1–100 for webp/jpeg. */
  quality?: number | null;
  /** Ask for a low-resolution preview at every step. @default false */
  preview?: boolean | null;
  /**
   * LoRAs (files in LORA_DIR) with strengths (default 1). Absent: the server-wide default set at submission;
   * `[]`: none.
   */
  loras?: { name: string; strength?: number | null }[] | null;
  /**
   * Control image for a BFL Control LoRA in the set: base64 image bytes, a `data:image/...;base64,` URL or an
   * http(s) URL. Loaded and decoded at submission (the service's job, not this module's).
   */
  controlImage?: string | null;
  /**
   * img2img / inpainting input image (same forms as `controlImage`), resized to the output size; loaded at
   * submission like the control image.
   */
  image?: string | null;
  /** Inpainting mask (white = repaint), the image's size; needs `image`. */
  mask?: string | null;
  /** Share of the schedule run on `image`, 0-1. @default 0.6 with an image */
  strength?: number | null;
  /** True CFG negative prompt (runs when `trueCfgScale > 1`). */
  negativePrompt?: string | null;
  /** True CFG scale (diffusers' `true_cfg_scale`). @default 1 (off) */
  trueCfgScale?: number | null;
}

/** Largest true-CFG scale a request may ask for. */
export const MAX_TRUE_CFG_SCALE = 30;

/** A validated request with every default applied. */
export interface GenerationRequest {
  prompt: string;
  model: ModelEntry;
  seed: number;
  width: number;
  height: number;
  steps: number;
  guidanceScale: number;
  numImages: number;
  outputFormat: ImageFormat;
  quality?: number;
  preview: boolean;
  /**
   * The LoRA set the job runs with. After `submit` it is explicit (the default set resolved at submission, or `[]`);
   * absent only before that.
   */
  loras?: LoraSelection[];
  /** img2img / inpainting: share of the schedule run on the input image (set exactly when an image is given). */
  strength?: number;
  /** `inpaint` with a mask, `img2img` without; absent for text-to-image (the images travel with the job). */
  edit?: 'img2img' | 'inpaint';
  /** True CFG: the negative prompt and the scale (both set only when the scale is above 1). */
  negativePrompt?: string;
  trueCfgScale?: number;
}

/** Defaults of a request, as the issue and the FLUX.1-dev reference pipeline set them. */
export const REQUEST_DEFAULTS = Object.freeze({
  aspectRatio: '1:1',
  steps: 28,
  guidanceScale: 3.5,
  numImages: 1,
  outputFormat: 'webp' as ImageFormat,
});

function side(limits: GenerationLimits, name: string) {
  return z
    .number()
    .int(`${name} must be an integer`)
    .min(limits.minSide, `${name} must be at least ${limits.minSide}`)
    .max(limits.maxSide, `${name} must be at most ${limits.maxSide}`)
    .refine((v) => v % limits.sideMultiple === 0, `${name} must be a multiple of ${limits.sideMultiple}`);
}

/**
 * The zod schema of {@link GenerateInput} under `limits`. Exported so the GraphQL layer can run the same rules
 * through `@pothos/plugin-validation` before its resolver.
 */
export function createInputSchema(limits: GenerationLimits) {
  const ratios = Object.keys(ASPECT_RATIOS);
  return z
    .object({
      prompt: z
        .string()
        .refine((s) => s.trim().length > 0, 'prompt must not be empty')
        .refine((s) => s.length <= limits.maxPromptChars, `prompt must be at most ${limits.maxPromptChars} characters`),
      model: z.string().max(200).nullish(),
      mode: z.string().max(50).nullish(),
      seed: z.number().int('seed must be an integer').min(0).max(0xffff_ffff).nullish(),
      aspectRatio: z
        .string()
        .refine((r) => ratios.includes(r), `aspectRatio must be one of ${ratios.join(', ')}`)
        .nullish(),
      width: side(limits, 'width').nullish(),
      height: side(limits, 'height').nullish(),
      steps: z
        .number()
        .int('steps must be an integer')
        .min(limits.minSteps, `steps must be at least ${limits.minSteps}`)
        .max(limits.maxSteps, `steps must be at most ${limits.maxSteps}`)
        .nullish(),
      guidanceScale: z
        .number()
        .min(limits.minGuidance, `guidanceScale must be at least ${limits.minGuidance}`)
        .max(limits.maxGuidance, `guidanceScale must be at most ${limits.maxGuidance}`)
        .nullish(),
      numImages: z
        .number()
        .int('numImages must be an integer')
        .min(1, 'numImages must be at least 1')
        .max(limits.maxImages, `numImages must be at most ${limits.maxImages} (the batch size)`)
        .nullish(),
      outputFormat: z.enum(IMAGE_FORMATS).nullish(),
      quality: z.number().int().min(1, 'quality must be 1…100').max(100, 'quality must be 1…100').nullish(),
      preview: z.boolean().nullish(),
      loras: z
        .array(
          z.object({
            name: loraName(),
            strength: loraStrength().nullish(),
          }),
        )
        .max(MAX_LORAS_PER_REQUEST, `at most ${MAX_LORAS_PER_REQUEST} LoRAs per request`)
        .refine((l) => new Set(l.map((x) => loraFileName(x.name))).size === l.length, 'a LoRA appears twice in loras')
        .nullish(),
      controlImage: z
        .string()
        .refine((s) => s.trim().length > 0, 'controlImage must not be empty')
        .refine(
          (s) => s.length <= MAX_CONTROL_IMAGE_CHARS,
          `controlImage must be at most ${MAX_CONTROL_IMAGE_CHARS} characters (a ${MAX_CONTROL_IMAGE_BYTES / 2 ** 20} MiB image)`,
        )
        .nullish(),
      image: mediaString('image'),
      mask: mediaString('mask'),
      strength: z.number().min(0, 'strength must be in [0, 1]').max(1, 'strength must be in [0, 1]').nullish(),
      negativePrompt: z
        .string()
        .refine(
          (s) => s.length <= limits.maxPromptChars,
          `negativePrompt must be at most ${limits.maxPromptChars} characters`,
        )
        .nullish(),
      trueCfgScale: z
        .number()
        .min(0, 'trueCfgScale must be at least 0')
        .max(MAX_TRUE_CFG_SCALE, `trueCfgScale must be at most ${MAX_TRUE_CFG_SCALE}`)
        .nullish(),
    })
    .superRefine((v, ctx) => {
      if (v.mask != null && v.image == null) {
        ctx.addIssue({ code: 'custom', path: ['mask'], message: 'a mask needs an image to inpaint' });
      }
      if (v.strength != null && v.image == null) {
        ctx.addIssue({ code: 'custom', path: ['strength'], message: 'strength needs an input image' });
      }
      if (v.image != null && v.controlImage != null) {
        ctx.addIssue({ code: 'custom', path: ['image'], message: 'give either image or controlImage' });
      }
      if (v.image != null && v.strength === 0) {
        ctx.addIssue({ code: 'custom', path: ['strength'], message: 'strength 0 leaves no step to run' });
      }
      const hasSize = v.width != null || v.height != null;
      if (hasSize && v.aspectRatio != null) {
        ctx.addIssue({ code: 'custom', path: ['aspectRatio'], message: 'give either aspectRatio or width/height' });
      } else if (hasSize && (v.width == null || v.height == null)) {
        const missing = v.width == null ? 'width' : 'height';
        ctx.addIssue({ code: 'custom', path: [missing], message: 'width and height must be given together' });
      }
      if (v.model != null && v.mode != null) {
        ctx.addIssue({ code: 'custom', path: ['mode'], message: 'give either model or mode' });
      }
    });
}

/** An image field (base64, data URL or http(s) URL), bounded like `controlImage`. */
function mediaString(field: string) {
  return z
    .string()
    .refine((s) => s.trim().length > 0, `${field} must not be empty`)
    .refine(
      (s) => s.length <= MAX_CONTROL_IMAGE_CHARS,
      `${field} must be at most ${MAX_CONTROL_IMAGE_CHARS} characters (a ${MAX_CONTROL_IMAGE_BYTES / 2 ** 20} MiB image)`,
    )
    .nullish();
}

/** The rule of a LoRA strength (also used by `loadLora`): the LoRA layer's {@link loraStrengthProblem}. */
export function loraStrength() {
  return z.number().superRefine((v, ctx) => {
    const problem = loraStrengthProblem(v);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });
}

/** The rule of a LoRA name (a path relative to LORA_DIR; also used by `loadLora` / `unloadLora`). */
export function loraName() {
  return z
    .string()
    .refine((n) => n.trim().length > 0, 'a LoRA name must not be empty')
    .refine((n) => n.length <= MAX_LORA_NAME_CHARS, `a LoRA name must be at most ${MAX_LORA_NAME_CHARS} characters`);
}

/** Converts the first zod issue to a {@link ValidationError}. */
export function toValidationError(issues: readonly { path?: readonly PropertyKey[]; message: string }[]) {
  const first = issues[0];
  const seg = first?.path?.[0];
  const field = typeof seg === 'string' ? seg : 'input';
  return new ValidationError(field, first?.message ?? 'invalid input');
}

/**
 * Validates and defaults a request.
 * @throws ValidationError for a bad field, UnknownModelError for a model or mode not served here.
 */
export function parseGenerateInput(input: unknown, catalog: ModelCatalog): GenerationRequest {
  const parsed = createInputSchema(catalog.default.limits).safeParse(input);
  if (!parsed.success) throw toValidationError(parsed.error.issues);
  const v = parsed.data;
  const model = catalog.resolve(v.model ?? v.mode);
  const size =
    v.width != null && v.height != null
      ? { width: v.width, height: v.height }
      : v.aspectRatio != null
        ? (ASPECT_RATIOS[v.aspectRatio] as { width: number; height: number })
        : // Neither: the model's native size (flux-mini 256x256; FLUX.1-dev's 1024x1024, the `1:1` ratio, otherwise).
          { width: model.limits.defaultWidth, height: model.limits.defaultHeight };
  return {
    prompt: v.prompt,
    model,
    // Random seeds stay in GraphQL's Int range so they can be echoed back and replayed.
    seed: v.seed ?? randomInt(0, 2 ** 31 - 1),
    width: size.width,
    height: size.height,
    steps: v.steps ?? REQUEST_DEFAULTS.steps,
    guidanceScale: v.guidanceScale ?? REQUEST_DEFAULTS.guidanceScale,
    numImages: v.numImages ?? REQUEST_DEFAULTS.numImages,
    outputFormat: v.outputFormat ?? REQUEST_DEFAULTS.outputFormat,
    ...(v.quality != null ? { quality: v.quality } : {}),
    preview: v.preview ?? false,
    ...(v.loras != null ? { loras: v.loras.map((l) => ({ name: l.name, strength: l.strength ?? 1 })) } : {}),
    ...(v.image != null ? { edit: v.mask != null ? 'inpaint' : 'img2img', strength: v.strength ?? 0.6 } : {}),
    ...(v.negativePrompt != null && (v.trueCfgScale ?? 1) > 1
      ? { negativePrompt: v.negativePrompt, trueCfgScale: v.trueCfgScale! }
      : {}),
  };
}
