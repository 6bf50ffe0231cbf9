/* eslint-disable */
/** Internal type. DO NOT USE DIRECTLY. */
type Exact<T extends { [key: string]: unknown }> = { [K in keyof T]: T[K] };
/** Internal type. DO NOT USE DIRECTLY. */
export type Incremental<T> = T | { [P in keyof T]?: P extends ' $fragmentName' | '__typename' ? T[P] : never };
import type { DocumentTypeDecoration } from '@graphql-typed-document-node/core';
export type GenerateImageInput = {
  /** One of the seed card's ratios (1:1 = 1024x1024, 16:9 = 1280x736, …); default 1:1. */
  aspectRatio?: string | null | undefined;
  /** Control image for a BFL Control LoRA (FLUX.1-Canny/Depth-dev-lora) in the LoRA set, required exactly when the set holds one: base64 image bytes, a `data:image/png;base64,...` URL or an http(s) URL (any format sharp reads; at most 10 MiB and 16777216 pixels; resized to the output size). Loaded at submission: problems come back as a ValidationError on `controlImage` whose `code` says why (`missing`, `unexpected`, `invalid_input`, `invalid_image`, `unsupported_url`, `forbidden_url` for hosts on loopback/private/link-local networks, `fetch_failed`, `too_large`, `timeout`). */
  controlImage?: string | null | undefined;
  /** Default 3.5. */
  guidanceScale?: number | null | undefined;
  height?: number | null | undefined;
  /** img2img / inpainting input image, in the same forms and limits as `controlImage`; resized to the output size and VAE-encoded (diffusers FluxImg2ImgPipeline / FluxInpaintPipeline). Errors name `image`. */
  image?: string | null | undefined;
  /** LoRAs for this request only, each with its strength. Absent: the server-wide default set (`loadLora`) as it is at submission; `[]`: none. Jobs batch only with jobs of the same set. */
  loras?: Array<LoraInput> | null | undefined;
  /** Inpainting mask (white = repaint, binarized at 0.5), the same size as `image`; same forms as `image`. A mask of another size is a ValidationError on `mask` with code `size_mismatch`. */
  mask?: string | null | undefined;
  /** Mode (`original`, `XL`, `L`, `M`, `S`); default: MODEL_SIZE. */
  mode?: string | null | undefined;
  /** Model id `flux-1-dev-<size>-bs<batch>`; an alternative to `mode`. */
  model?: string | null | undefined;
  /** True CFG: the negative prompt, used when `trueCfgScale` > 1. */
  negativePrompt?: string | null | undefined;
  /** Default 1; at most the batch size. */
  numImages?: number | null | undefined;
  /** Default WEBP. */
  outputFormat?: ImageFormat | null | undefined;
  /** Publish a low-resolution preview URL with every step event. */
  preview?: boolean | null | undefined;
  prompt: string;
  /** Lossy quality 1–100 (WEBP, JPEG). */
  quality?: number | null | undefined;
  /** Random when absent; image k of the job uses seed + k. */
  seed?: number | null | undefined;
  /** Denoising steps; default 28. */
  steps?: number | null | undefined;
  /** With `image`: the share of the schedule run, 0-1; default 0.6. */
  strength?: number | null | undefined;
  /** True classifier-free guidance scale (diffusers `true_cfg_scale`): `neg + scale·(pos − neg)`, the negative branch batched with the positive one; default 1 (off). */
  trueCfgScale?: number | null | undefined;
  /** With height, instead of aspectRatio; a multiple of 16. */
  width?: number | null | undefined;
};

export type ImageFormat =
  | 'JPEG'
  | 'PNG'
  | 'WEBP';

export type JobStatus =
  | 'CANCELED'
  | 'FAILED'
  | 'QUEUED'
  | 'RUNNING'
  | 'SUCCEEDED';

/** File format, detected from the tensor keys. */
export type LoraFormat =
  /** BFL Control LoRA (widened input, biases, norms). */
  | 'BFL_CONTROL'
  /** diffusers / PEFT (`lora_A` / `lora_B`). */
  | 'DIFFUSERS'
  /** kohya (`lora_unet_…`, `lora_down` / `lora_up` / `alpha`). */
  | 'KOHYA'
  /** XLabs (`processor.qkv_lora1` …). */
  | 'XLABS';

/** A LoRA file in LORA_DIR and its strength. */
export type LoraInput = {
  /** Path relative to LORA_DIR; `.safetensors` may be left out. */
  name: string;
  /** Scale of its delta, -10…10. */
  strength?: number | null | undefined;
};

/** Where a latency number comes from. */
export type SpecOrigin =
  /** Measured by the repository's mode benchmark (`bench/results/modes.json`, MODES_RESULTS) on the machine named in `hardware`, not live by this server. */
  | 'BENCHMARK'
  /** Measured by this server's engine: live on its own hardware (source `this server`), or by the engine's benchmark on the card named in `hardware` (source: the result file). */
  | 'MEASURED'
  /** FLUX.1-dev's latency as stated on the TheStage seed model card: not measured here, and not the served model's unless it is FLUX.1-dev (flux-mini and flux-tiny are far smaller). */
  | 'PUBLISHED';

export type WebModelsQueryVariables = Exact<{ [key: string]: never; }>;


export type WebModelsQuery = { models: Array<{ id: string, mode: string, name: string, description: string, device: string, isDefault: boolean, limits: { minSide: number, maxSide: number, sideMultiple: number, minSteps: number, maxSteps: number, minGuidance: number, maxGuidance: number, aspectRatios: Array<string>, defaultWidth: number, defaultHeight: number }, specs: Array<{ origin: SpecOrigin, hardware: string, width: number, height: number, steps: number | null, latencySeconds: number | null, meanStepMs: number | null }>, quality: { psnr: number, ssim: number } | null }> };

export type WebGenerateMutationVariables = Exact<{
  input: GenerateImageInput;
}>;


export type WebGenerateMutation = { generateImage:
    | { __typename: 'LoraError', code: string, message: string }
    | { __typename: 'MutationGenerateImageSuccess', data: { id: string, jobId: string, status: JobStatus, totalSteps: number, width: number, height: number } }
    | { __typename: 'QueueFullError', message: string, retryAfterSeconds: number }
    | { __typename: 'ServiceUnavailableError' }
    | { __typename: 'UnknownModelError', message: string, available: Array<string> }
    | { __typename: 'ValidationError', field: string, message: string }
   };

export type WebLorasQueryVariables = Exact<{ [key: string]: never; }>;


export type WebLorasQuery = { loras:
    | { __typename: 'LoraError', message: string }
    | { __typename: 'QueryLorasSuccess', data: Array<
        | { __typename: 'InvalidLoraFile', name: string, sizeBytes: number }
        | { __typename: 'LoraFile', format: LoraFormat, rank: number, strength: number | null, name: string, sizeBytes: number }
      > }
   };

export type WebCancelMutationVariables = Exact<{
  id: string | number;
}>;


export type WebCancelMutation = { cancelJob:
    | { __typename: 'MutationCancelJobSuccess', data: { id: string, status: JobStatus } }
    | { __typename: 'NotFoundError', message: string }
    | { __typename: 'ServiceUnavailableError' }
   };

export type WebRecentJobsQueryVariables = Exact<{
  first: number;
}>;


export type WebRecentJobsQuery = { jobs: { edges: Array<{ node: { id: string, jobId: string, status: JobStatus, prompt: string, width: number, height: number, steps: number, createdAt: string, model: { mode: string }, images: Array<{ url: string, width: number, height: number }> } }> } };

export type WebJobProgressSubscriptionVariables = Exact<{
  id: string | number;
}>;


export type WebJobProgressSubscription = { jobProgress:
    | { __typename: 'JobCanceledEvent', reason: string }
    | { __typename: 'JobFailedEvent', code: string, message: string }
    | { __typename: 'JobRetryEvent' }
    | { __typename: 'JobSnapshotEvent', status: JobStatus, step: number, totalSteps: number, etaMs: number | null, queuePosition: number | null, job: { previewUrl: string | null, images: Array<{ url: string, width: number, height: number, format: ImageFormat }> } }
    | { __typename: 'JobStartedEvent', totalSteps: number }
    | { __typename: 'JobStepEvent', step: number, totalSteps: number, etaMs: number | null, previewUrl: string | null }
    | { __typename: 'JobSucceededEvent', images: Array<{ url: string, width: number, height: number, format: ImageFormat }> }
    | { __typename: 'NotFoundError', message: string }
   };

export class TypedDocumentString<TResult, TVariables>
  extends String
  implements DocumentTypeDecoration<TResult, TVariables>
{
  __apiType?: NonNullable<DocumentTypeDecoration<TResult, TVariables>['__apiType']>;
  private value: string;
  public __meta__?: Record<string, any> | undefined;

  constructor(value: string, __meta__?: Record<string, any> | undefined) {
    super(value);
    this.value = value;
    this.__meta__ = __meta__;
  }

  override toString(): string & DocumentTypeDecoration<TResult, TVariables> {
    return this.value;
  }
}

export const WebModelsDocument = new TypedDocumentString(`
    query WebModels {
  models {
    id
    mode
    name
    description
    device
    isDefault
    limits {
      minSide
      maxSide
      sideMultiple
      minSteps
      maxSteps
      minGuidance
      maxGuidance
      aspectRatios
      defaultWidth
      defaultHeight
    }
    specs {
      origin
      hardware
      width
      height
      steps
      latencySeconds
      meanStepMs
    }
    quality {
      psnr
      ssim
    }
  }
}
    `) as unknown as TypedDocumentString<WebModelsQuery, WebModelsQueryVariables>;
export const WebGenerateDocument = new TypedDocumentString(`
    mutation WebGenerate($input: GenerateImageInput!) {
  generateImage(input: $input) {
    __typename
    ... on MutationGenerateImageSuccess {
      data {
        id
        jobId
        status
        totalSteps
        width
        height
      }
    }
    ... on ValidationError {
      field
      message
    }
    ... on QueueFullError {
      message
      retryAfterSeconds
    }
    ... on UnknownModelError {
      message
      available
    }
    ... on LoraError {
      code
      message
    }
  }
}
    `) as unknown as TypedDocumentString<WebGenerateMutation, WebGenerateMutationVariables>;
export const WebLorasDocument = new TypedDocumentString(`
    query WebLoras {
  loras {
    __typename
    ... on QueryLorasSuccess {
      data {
        __typename
        name
        sizeBytes
        ... on LoraFile {
          format
          rank
          strength
        }
      }
    }
    ... on LoraError {
      message
    }
  }
}
    `) as unknown as TypedDocumentString<WebLorasQuery, WebLorasQueryVariables>;
export const WebCancelDocument = new TypedDocumentString(`
    mutation WebCancel($id: ID!) {
  cancelJob(id: $id) {
    __typename
    ... on MutationCancelJobSuccess {
      data {
        id
        status
      }
    }
    ... on NotFoundError {
      message
    }
  }
}
    `) as unknown as TypedDocumentString<WebCancelMutation, WebCancelMutationVariables>;
export const WebRecentJobsDocument = new TypedDocumentString(`
    query WebRecentJobs($first: Int!) {
  jobs(first: $first) {
    edges {
      node {
        id
        jobId
        status
        prompt
        width
        height
        steps
        createdAt
        model {
          mode
        }
        images {
          url
          width
          height
        }
      }
    }
  }
}
    `) as unknown as TypedDocumentString<WebRecentJobsQuery, WebRecentJobsQueryVariables>;
export const WebJobProgressDocument = new TypedDocumentString(`
    subscription WebJobProgress($id: ID!) {
  jobProgress(id: $id) {
    __typename
    ... on JobSnapshotEvent {
      status
      step
      totalSteps
      etaMs
      queuePosition
      job {
        previewUrl
        images {
          url
          width
          height
          format
        }
      }
    }
    ... on JobStartedEvent {
      totalSteps
    }
    ... on JobStepEvent {
      step
      totalSteps
      etaMs
      previewUrl
    }
    ... on JobSucceededEvent {
      images {
        url
        width
        height
        format
      }
    }
    ... on JobFailedEvent {
      code
      message
    }
    ... on JobCanceledEvent {
      reason
    }
    ... on NotFoundError {
      message
    }
  }
}
    `) as unknown as TypedDocumentString<WebJobProgressSubscription, WebJobProgressSubscriptionVariables>;