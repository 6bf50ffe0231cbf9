/**
 * @file `POST /v1/images/generations` in two dialects on one route:
 * - TheStage (their container's client): `X-Model-Name` header, body `{prompt, seed, aspect_ratio,
 *   guidance_scale, num_inference_steps}` → the image bytes (WebP unless `output_format` says otherwise).
 * - OpenAI: any of `model`, `n`, `size`, `response_format`, `output_format`, `output_compression` in the body, or
 *   an explicit `Accept: application/json` → `{created, data:[{b64_json}|{url}]}` and OpenAI's error shape.
 * Both take `loras: [{name, strength}]` (files in LORA_DIR) for this request only; a bad set is a 400 with
 * `param: "loras"` and the LoRA layer's `code`. Both take `control_image` (base64, data URL or http(s) URL) for a
 * BFL Control LoRA; a bad one is a 400 with `param: "control_image"` and the reason as `code`. The body may be up
 * to {@link MAX_BODY_BYTES} for it.
 * `POST /v1/images/edits` (same handler): OpenAI's multipart form (`image` / `image[]`, `mask`, `prompt`, `n`, `size`,
 * `response_format`, plus `strength`, `negative_prompt`, `true_cfg_scale`, `seed`, ...) or a JSON body with `image`
 * and `mask` as base64, data or http(s) URLs; a bad image or mask is a 400 with `param` naming it.
 * The request waits for the job; if the client disconnects first, the job is cancelled (queued: at once;
 * running: at the next step boundary).
 * Also `GET /v1/models` in OpenAI's list shape.
 */
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import {
  type Caller,
  type GenerateInput,
  type GenerationService,
  type Job,
  LoraRequestError,
  MAX_CONTROL_IMAGE_BYTES,
  MAX_CONTROL_IMAGE_CHARS,
  QueueFullError,
  ServiceUnavailableError,
  UnknownModelError,
  urlPathOf,
  ValidationError,
} from '../../service/index.ts';
import { HttpError, readJsonObject, sendJson } from './http.ts';
import { readEditBody } from './multipart.ts';

const OPENAI_FIELDS = ['model', 'n', 'size', 'response_format', 'output_format', 'output_compression'];

// Canonical field → request parameter, per dialect, so errors name what the client actually sent.
const PARAM_OF: Record<string, string> = {
  prompt: 'prompt',
  model: 'model',
  mode: 'model',
  seed: 'seed',
  aspectRatio: 'aspect_ratio',
  steps: 'num_inference_steps',
  guidanceScale: 'guidance_scale',
  numImages: 'n',
  outputFormat: 'output_format',
  quality: 'output_compression',
  loras: 'loras',
  controlImage: 'control_image',
  image: 'image',
  mask: 'mask',
  strength: 'strength',
  negativePrompt: 'negative_prompt',
  trueCfgScale: 'true_cfg_scale',
};

/** Largest body: a base64 control image of the largest size allowed, and the rest of the request. */
export const MAX_BODY_BYTES = MAX_CONTROL_IMAGE_CHARS + 1024 * 1024;

export interface Parsed {
  input: GenerateInput;
  openai: boolean;
  responseFormat: 'b64_json' | 'url';
  /** Whether width/height came from OpenAI's `size` (for error `param`). */
  fromSize: boolean;
}

function num(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  // Leave wrong types to the service's validation (it reports the field); only undefined means "absent".
  return v as number;
}

export function parseRequest(req: IncomingMessage, body: Record<string, unknown>, forceOpenai = false): Parsed {
  const accept = req.headers.accept ?? '';
  const openai = forceOpenai || OPENAI_FIELDS.some((k) => body[k] !== undefined) || /application\/json/i.test(accept);
  const header = req.headers['x-model-name'];
  const model = (body.model as string | undefined) ?? (Array.isArray(header) ? header[0] : header);
  let width = num(body, 'width');
  let height = num(body, 'height');
  let fromSize = false;
  const size = body.size;
  if (size !== undefined && size !== null && size !== 'auto') {
    const m = typeof size === 'string' ? /^(\d+)x(\d+)$/.exec(size) : null;
    if (!m) throw new ValidationError('size', 'size must be "<width>x<height>" (e.g. "1024x1024") or "auto"');
    width = Number(m[1]);
    height = Number(m[2]);
    fromSize = true;
  }
  const rf = body.response_format ?? 'b64_json';
  if (rf !== 'b64_json' && rf !== 'url') {
    throw new ValidationError('response_format', 'response_format must be "b64_json" or "url"');
  }
  const format = body.output_format === 'jpg' ? 'jpeg' : body.output_format;
  const input: GenerateInput = {
    prompt: body.prompt as string,
    model: model ?? null,
    seed: num(body, 'seed') ?? null,
    aspectRatio: (body.aspect_ratio as string | undefined) ?? null,
    width: width ?? null,
    height: height ?? null,
    steps: num(body, 'num_inference_steps') ?? null,
    guidanceScale: num(body, 'guidance_scale') ?? null,
    numImages: num(body, 'n') ?? null,
    // OpenAI's default is PNG; TheStage's container returns WebP.
    outputFormat: (format as GenerateInput['outputFormat']) ?? (openai ? 'png' : 'webp'),
    quality: num(body, 'output_compression') ?? num(body, 'output_quality') ?? null,
    // Wrong shapes are left to the service's validation, which names `loras`.
    loras: (body.loras as GenerateInput['loras']) ?? null,
    controlImage: (body.control_image as string | undefined) ?? null,
    // Edits (`/v1/images/edits`, or these fields on either route): input image, mask, strength, true CFG.
    image: (body.image as string | undefined) ?? null,
    mask: (body.mask as string | undefined) ?? null,
    strength: num(body, 'strength') ?? null,
    negativePrompt: (body.negative_prompt as string | undefined) ?? null,
    trueCfgScale: num(body, 'true_cfg_scale') ?? null,
  };
  return { input, openai, responseFormat: rf, fromSize };
}

/** Maps service errors to HTTP errors with OpenAI's `type`/`code`/`param`. */
export function toHttpError(err: unknown, fromSize = false): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof ValidationError) {
    const param =
      err.field === 'width' || err.field === 'height'
        ? fromSize
          ? 'size'
          : err.field
        : (PARAM_OF[err.field] ?? err.field);
    return new HttpError(400, err.message, 'invalid_request_error', err.code, param);
  }
  if (err instanceof LoraRequestError) {
    return new HttpError(400, err.message, 'invalid_request_error', err.code, 'loras');
  }
  if (err instanceof UnknownModelError) {
    return new HttpError(404, err.message, 'invalid_request_error', err.code, 'model');
  }
  if (err instanceof ServiceUnavailableError) {
    return new HttpError(503, err.message, 'server_error', err.code, null, {
      'retry-after': String(err.retryAfterSeconds),
    });
  }
  if (err instanceof QueueFullError) {
    return new HttpError(429, err.message, 'rate_limit_exceeded', err.code, null, {
      'retry-after': String(err.retryAfterSeconds),
    });
  }
  return new HttpError(500, 'Internal server error', 'server_error', 'internal_error');
}

/** Codes of the LoRA layer: a job that failed with one (found by a scale-out worker) was a bad request. */
const LORA_CODES = new Set([
  'not_found',
  'forbidden_path',
  'invalid_file',
  'unmatched_keys',
  'shape_mismatch',
  'bad_rank',
  'non_finite',
  'unsupported',
  'bad_argument',
]);

/** The HTTP error of a job that ended without images, keeping the job's typed code. */
function jobFailure(error: { code: string; message: string } | undefined): HttpError {
  const code = error?.code ?? 'generation_failed';
  const message = error?.message ?? 'generation failed';
  if (code === 'timeout') return new HttpError(504, message, 'server_error', code);
  if (LORA_CODES.has(code)) return new HttpError(400, message, 'invalid_request_error', code, 'loras');
  return new HttpError(500, message, 'server_error', code);
}

/** What the route needs besides the service. */
export interface GenerationRoute {
  service: GenerationService;
  /** Origin of absolute image URLs. */
  baseUrl: string;
  /** The API key's owner (jobs are recorded under it); absent without keys. */
  caller?: Caller;
  /** Signs an image path for `response_format: "url"` (see `auth.ts`). */
  signPath(path: string): string;
  /** `POST /v1/images/edits`: an input image is required, and the body may be multipart. */
  edits?: boolean;
}

/**
 * Reads a generation request's body: JSON, or, for the edit routes (`/v1/images/edits`, `/v1/queue/images/edits`),
 * also OpenAI's multipart form (then `multipart` is true and the answer is OpenAI-shaped).
 */
export function readGenerationBody(
  req: IncomingMessage,
  edits: boolean,
): Promise<{ body: Record<string, unknown>; multipart: boolean }> {
  return edits
    ? readEditBody(req, MAX_CONTROL_IMAGE_BYTES, MAX_BODY_BYTES)
    : readJsonObject(req, MAX_BODY_BYTES).then((b) => ({ body: b, multipart: false }));
}

/** An edit route's request names its input image. @throws ValidationError on `image` */
export function checkEditImage(body: Record<string, unknown>): void {
  if (body.image === undefined || body.image === null)
    throw new ValidationError('image', 'an edit needs an input image');
}

/** Handles `POST /v1/images/generations`; errors are thrown as {@link HttpError} for the router to send. */
export async function handleImageGeneration(
  req: IncomingMessage,
  res: ServerResponse,
  route: GenerationRoute,
): Promise<void> {
  const { service, baseUrl } = route;
  // `/v1/images/edits` also takes OpenAI's multipart form (then the answer is OpenAI-shaped).
  const { body, multipart } = await readGenerationBody(req, route.edits === true).catch((err: HttpError) => {
    service.countError({ code: err.code });
    throw err;
  });
  // A client that leaves while its request loads (a control image download) withdraws it: no job is made.
  const withdrawn = new AbortController();
  const onEarlyClose = () => {
    if (!res.writableEnded) withdrawn.abort(new Error('client disconnected'));
  };
  res.once('close', onEarlyClose);
  let parsed: Parsed | undefined;
  let jobId: string;
  try {
    if (route.edits) checkEditImage(body);
    parsed = parseRequest(req, body, multipart);
    jobId = (
      await service.submit(parsed.input, {
        signal: withdrawn.signal,
        ...(route.caller ? { caller: route.caller } : {}),
      })
    ).id;
  } catch (err) {
    // Nobody to answer; not a server error either.
    if (withdrawn.signal.aborted) throw new HttpError(499, 'client disconnected', 'invalid_request_error', 'canceled');
    // submit() counts its own errors; count only the ones parsing raised before it.
    if (!parsed) service.countError(err);
    throw toHttpError(err, parsed?.fromSize ?? body.size !== undefined);
  } finally {
    res.off('close', onEarlyClose);
  }
  if (withdrawn.signal.aborted || res.destroyed) {
    await service.cancel(jobId, 'client disconnected').catch(() => {});
    return;
  }
  // On every answer from here on, errors included (and so in the request's log line).
  res.setHeader('x-job-id', jobId);
  // A client that hangs up no longer wants the image: free its slot (vLLM/TGI abort-on-disconnect).
  const onClose = () => {
    if (!res.writableEnded) service.cancel(jobId, 'client disconnected').catch(() => {});
  };
  res.once('close', onClose);

  const job = await service.waitFor(jobId);
  if (res.destroyed) return;
  res.off('close', onClose);
  if (job.status === 'CANCELED') {
    throw new HttpError(409, job.cancelReason ?? 'canceled', 'invalid_request_error', 'canceled');
  }
  if (job.status !== 'SUCCEEDED') throw jobFailure(job.error);

  const images = job.images;
  const first = images[0];
  if (!first) throw new HttpError(500, 'no image produced', 'server_error', 'generation_failed');
  if (!parsed.openai) {
    const bytes = await readFile(join(service.images.dir, first.fileName));
    res.writeHead(200, {
      'content-type': first.contentType,
      'content-length': bytes.byteLength,
      'x-job-id': job.id,
      'x-seed': String(first.seed),
      'cache-control': 'no-store',
    });
    res.end(bytes);
    return;
  }
  sendJson(res, 200, await openAiResult(job, service, parsed.responseFormat, baseUrl, route.signPath), {
    'x-job-id': job.id,
  });
}

/** A finished job's images in OpenAI's response shape (`data` as b64_json or URLs); shared with the queue API. */
export async function openAiResult(
  job: Job,
  service: GenerationService,
  responseFormat: 'b64_json' | 'url',
  baseUrl: string,
  /** Signs image paths when API keys are on (`auth.ts`). */
  signPath: (path: string) => string = (path) => path,
): Promise<Record<string, unknown>> {
  const data = await Promise.all(
    job.images.map(async (img) =>
      responseFormat === 'url'
        ? { url: `${baseUrl}${signPath(urlPathOf(img.fileName))}`, revised_prompt: job.request.prompt }
        : {
            b64_json: (await readFile(join(service.images.dir, img.fileName))).toString('base64'),
            revised_prompt: job.request.prompt,
          },
    ),
  );
  return {
    created: Math.floor((job.finishedAt ?? new Date()).getTime() / 1000),
    data,
    output_format: job.request.outputFormat,
    size: `${job.request.width}x${job.request.height}`,
  };
}

/** `GET /v1/models`, OpenAI list shape. */
export function handleListModels(res: ServerResponse, service: GenerationService): void {
  sendJson(res, 200, {
    object: 'list',
    data: service.models().map((m) => ({ id: m.id, object: 'model', created: 0, owned_by: 'fluxql' })),
  });
}
