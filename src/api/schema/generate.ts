/**
 * @file The `generateImage` mutation: validates (plugin-validation, with the service's own zod rules), queues,
 * and returns the job at once; failures come back as data.
 */
import {
  createInputSchema,
  DEFAULT_LIMITS,
  LoraRequestError,
  MAX_CONTROL_IMAGE_BYTES,
  MAX_CONTROL_IMAGE_PIXELS,
  QueueFullError,
  REQUEST_DEFAULTS,
  ServiceUnavailableError,
  UnknownModelError,
  ValidationError,
} from '../../service/index.ts';
import { MODE_NAMES } from '../../shared/vocabulary/index.ts';
import { builder } from '../builder.ts';
import { ImageFormatEnum, ImageJobRef } from './job.ts';
import { LoraInputRef } from './lora.ts';

// numImages ≤ batch size depends on MODEL_BATCH, known only at run time: the service checks it on submit.
const inputSchema = createInputSchema({ ...DEFAULT_LIMITS, maxImages: Number.MAX_SAFE_INTEGER });

const GenerateImageInput = builder.inputType('GenerateImageInput', {
  validate: inputSchema,
  fields: (t) => ({
    prompt: t.string({ required: true }),
    mode: t.string({ description: `Mode (${MODE_NAMES.map((m) => `\`${m}\``).join(', ')}); default: MODEL_SIZE.` }),
    model: t.string({ description: 'Model id `flux-1-dev-<size>-bs<batch>`; an alternative to `mode`.' }),
    seed: t.int({ description: 'Random when absent; image k of the job uses seed + k.' }),
    aspectRatio: t.string({
      description: `One of the seed card's ratios (1:1 = 1024x1024, 16:9 = 1280x736, …); default ${REQUEST_DEFAULTS.aspectRatio}.`,
    }),
    width: t.int({ description: 'With height, instead of aspectRatio; a multiple of 16.' }),
    height: t.int(),
    steps: t.int({ description: `Denoising steps; default ${REQUEST_DEFAULTS.steps}.` }),
    guidanceScale: t.float({ description: `Default ${REQUEST_DEFAULTS.guidanceScale}.` }),
    numImages: t.int({ description: 'Default 1; at most the batch size.' }),
    outputFormat: t.field({ type: ImageFormatEnum, description: 'Default WEBP.' }),
    quality: t.int({ description: 'Lossy quality 1–100 (WEBP, JPEG).' }),
    preview: t.boolean({ description: 'Publish a low-resolution preview URL with every step event.' }),
    loras: t.field({
      type: [LoraInputRef],
      description:
        'LoRAs for this request only, each with its strength. Absent: the server-wide default set (`loadLora`) as ' +
        'it is at submission; `[]`: none. Jobs batch only with jobs of the same set.',
    }),
    controlImage: t.string({
      description:
        'Control image for a BFL Control LoRA (FLUX.1-Canny/Depth-dev-lora) in the LoRA set, required exactly when ' +
        'the set holds one: base64 image bytes, a `data:image/png;base64,...` URL or an http(s) URL (any format ' +
        `sharp reads; at most ${MAX_CONTROL_IMAGE_BYTES / 2 ** 20} MiB and ${MAX_CONTROL_IMAGE_PIXELS} pixels; resized ` +
        'to the output size). Loaded at submission: problems come back as a ValidationError on `controlImage` whose ' +
        '`code` says why (`missing`, `unexpected`, `invalid_input`, `invalid_image`, `unsupported_url`, ' +
        '`forbidden_url` for hosts on loopback/private/link-local networks, `fetch_failed`, `too_large`, `timeout`).',
    }),
    image: t.string({
      description:
        'img2img / inpainting input image, in the same forms and limits as `controlImage`; resized to the output ' +
        'size and VAE-encoded (diffusers FluxImg2ImgPipeline / FluxInpaintPipeline). Errors name `image`.',
    }),
    mask: t.string({
      description:
        'Inpainting mask (white = repaint, binarized at 0.5), the same size as `image`; same forms as `image`. ' +
        'A mask of another size is a ValidationError on `mask` with code `size_mismatch`.',
    }),
    strength: t.float({ description: 'With `image`: the share of the schedule run, 0-1; default 0.6.' }),
    negativePrompt: t.string({ description: 'True CFG: the negative prompt, used when `trueCfgScale` > 1.' }),
    trueCfgScale: t.float({
      description:
        'True classifier-free guidance scale (diffusers `true_cfg_scale`): `neg + scale·(pos − neg)`, the negative ' +
        'branch batched with the positive one; default 1 (off).',
    }),
  }),
});

builder.mutationField('generateImage', (t) =>
  t.field({
    type: ImageJobRef,
    description: 'Queues a generation and returns its job at once; follow it with `jobProgress`.',
    errors: { types: [ValidationError, QueueFullError, UnknownModelError, ServiceUnavailableError, LoraRequestError] },
    args: { input: t.arg({ type: GenerateImageInput, required: true }) },
    resolve: (_root, { input }, ctx) => ctx.service.submit(input, ctx.caller ? { caller: ctx.caller } : {}),
  }),
);
