/**
 * @file Every GraphQL operation the page runs, written with the generated `graphql()` so each one is typed by
 * codegen (`npx tsx codegen.ts` → `web/src/gql/`). Documents are strings (`documentMode: 'string'`), so the page
 * ships no GraphQL parser.
 */
import { graphql } from './gql/index.ts';

/** Modes with limits and latency/quality figures for the mode selector. */
export const WebModelsQuery = graphql(`
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
`);

/** Queues a job; failures come back as data (ValidationError names the field). */
export const WebGenerateMutation = graphql(`
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
`);

/** LoRA files for the LoRA selector, with their place in the server-wide default set. */
export const WebLorasQuery = graphql(`
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
`);

/** Cancels a job (queued: at once; running: at the next step). */
export const WebCancelMutation = graphql(`
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
`);

/** The recent-jobs list, newest first. */
export const WebRecentJobsQuery = graphql(`
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
`);

/** Live progress of one job: a snapshot, one event per step, then the outcome. */
export const WebJobProgressSubscription = graphql(`
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
`);
