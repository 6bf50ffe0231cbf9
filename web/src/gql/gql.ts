/* eslint-disable */
import * as types from './graphql.ts';



/**
 * Map of all GraphQL operations in the project.
 *
 * This map has several performance disadvantages:
 * 1. It is not tree-shakeable, so it will include all operations in the project.
 * 2. It is not minifiable, so the string of a GraphQL query will be multiple times inside the bundle.
 * 3. It does not support dead code elimination, so it will add unused operations.
 *
 * Therefore it is highly recommended to use the babel or swc plugin for production.
 * Learn more about it here: https://the-guild.dev/graphql/codegen/plugins/presets/preset-client#reducing-bundle-size
 */
type Documents = {
    "\n  query WebModels {\n    models {\n      id\n      mode\n      name\n      description\n      device\n      isDefault\n      limits {\n        minSide\n        maxSide\n        sideMultiple\n        minSteps\n        maxSteps\n        minGuidance\n        maxGuidance\n        aspectRatios\n        defaultWidth\n        defaultHeight\n      }\n      specs {\n        origin\n        hardware\n        width\n        height\n        steps\n        latencySeconds\n        meanStepMs\n      }\n      quality {\n        psnr\n        ssim\n      }\n    }\n  }\n": typeof types.WebModelsDocument,
    "\n  mutation WebGenerate($input: GenerateImageInput!) {\n    generateImage(input: $input) {\n      __typename\n      ... on MutationGenerateImageSuccess {\n        data {\n          id\n          jobId\n          status\n          totalSteps\n          width\n          height\n        }\n      }\n      ... on ValidationError {\n        field\n        message\n      }\n      ... on QueueFullError {\n        message\n        retryAfterSeconds\n      }\n      ... on UnknownModelError {\n        message\n        available\n      }\n      ... on LoraError {\n        code\n        message\n      }\n    }\n  }\n": typeof types.WebGenerateDocument,
    "\n  query WebLoras {\n    loras {\n      __typename\n      ... on QueryLorasSuccess {\n        data {\n          __typename\n          name\n          sizeBytes\n          ... on LoraFile {\n            format\n            rank\n            strength\n          }\n        }\n      }\n      ... on LoraError {\n        message\n      }\n    }\n  }\n": typeof types.WebLorasDocument,
    "\n  mutation WebCancel($id: ID!) {\n    cancelJob(id: $id) {\n      __typename\n      ... on MutationCancelJobSuccess {\n        data {\n          id\n          status\n        }\n      }\n      ... on NotFoundError {\n        message\n      }\n    }\n  }\n": typeof types.WebCancelDocument,
    "\n  query WebRecentJobs($first: Int!) {\n    jobs(first: $first) {\n      edges {\n        node {\n          id\n          jobId\n          status\n          prompt\n          width\n          height\n          steps\n          createdAt\n          model {\n            mode\n          }\n          images {\n            url\n            width\n            height\n          }\n        }\n      }\n    }\n  }\n": typeof types.WebRecentJobsDocument,
    "\n  subscription WebJobProgress($id: ID!) {\n    jobProgress(id: $id) {\n      __typename\n      ... on JobSnapshotEvent {\n        status\n        step\n        totalSteps\n        etaMs\n        queuePosition\n        job {\n          previewUrl\n          images {\n            url\n            width\n            height\n            format\n          }\n        }\n      }\n      ... on JobStartedEvent {\n        totalSteps\n      }\n      ... on JobStepEvent {\n        step\n        totalSteps\n        etaMs\n        previewUrl\n      }\n      ... on JobSucceededEvent {\n        images {\n          url\n          width\n          height\n          format\n        }\n      }\n      ... on JobFailedEvent {\n        code\n        message\n      }\n      ... on JobCanceledEvent {\n        reason\n      }\n      ... on NotFoundError {\n        message\n      }\n    }\n  }\n": typeof types.WebJobProgressDocument,
};
const documents: Documents = {
    "\n  query WebModels {\n    models {\n      id\n      mode\n      name\n      description\n      device\n      isDefault\n      limits {\n        minSide\n        maxSide\n        sideMultiple\n        minSteps\n        maxSteps\n        minGuidance\n        maxGuidance\n        aspectRatios\n        defaultWidth\n        defaultHeight\n      }\n      specs {\n        origin\n        hardware\n        width\n        height\n        steps\n        latencySeconds\n        meanStepMs\n      }\n      quality {\n        psnr\n        ssim\n      }\n    }\n  }\n": types.WebModelsDocument,
    "\n  mutation WebGenerate($input: GenerateImageInput!) {\n    generateImage(input: $input) {\n      __typename\n      ... on MutationGenerateImageSuccess {\n        data {\n          id\n          jobId\n          status\n          totalSteps\n          width\n          height\n        }\n      }\n      ... on ValidationError {\n        field\n        message\n      }\n      ... on QueueFullError {\n        message\n        retryAfterSeconds\n      }\n      ... on UnknownModelError {\n        message\n        available\n      }\n      ... on LoraError {\n        code\n        message\n      }\n    }\n  }\n": types.WebGenerateDocument,
    "\n  query WebLoras {\n    loras {\n      __typename\n      ... on QueryLorasSuccess {\n        data {\n          __typename\n          name\n          sizeBytes\n          ... on LoraFile {\n            format\n            rank\n            strength\n          }\n        }\n      }\n      ... on LoraError {\n        message\n      }\n    }\n  }\n": types.WebLorasDocument,
    "\n  mutation WebCancel($id: ID!) {\n    cancelJob(id: $id) {\n      __typename\n      ... on MutationCancelJobSuccess {\n        data {\n          id\n          status\n        }\n      }\n      ... on NotFoundError {\n        message\n      }\n    }\n  }\n": types.WebCancelDocument,
    "\n  query WebRecentJobs($first: Int!) {\n    jobs(first: $first) {\n      edges {\n        node {\n          id\n          jobId\n          status\n          prompt\n          width\n          height\n          steps\n          createdAt\n          model {\n            mode\n          }\n          images {\n            url\n            width\n            height\n          }\n        }\n      }\n    }\n  }\n": types.WebRecentJobsDocument,
    "\n  subscription WebJobProgress($id: ID!) {\n    jobProgress(id: $id) {\n      __typename\n      ... on JobSnapshotEvent {\n        status\n        step\n        totalSteps\n        etaMs\n        queuePosition\n        job {\n          previewUrl\n          images {\n            url\n            width\n            height\n            format\n          }\n        }\n      }\n      ... on JobStartedEvent {\n        totalSteps\n      }\n      ... on JobStepEvent {\n        step\n        totalSteps\n        etaMs\n        previewUrl\n      }\n      ... on JobSucceededEvent {\n        images {\n          url\n          width\n          height\n          format\n        }\n      }\n      ... on JobFailedEvent {\n        code\n        message\n      }\n      ... on JobCanceledEvent {\n        reason\n      }\n      ... on NotFoundError {\n        message\n      }\n    }\n  }\n": types.WebJobProgressDocument,
};

/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "\n  query WebModels {\n    models {\n      id\n      mode\n      name\n      description\n      device\n      isDefault\n      limits {\n        minSide\n        maxSide\n        sideMultiple\n        minSteps\n        maxSteps\n        minGuidance\n        maxGuidance\n        aspectRatios\n        defaultWidth\n        defaultHeight\n      }\n      specs {\n        origin\n        hardware\n        width\n        height\n        steps\n        latencySeconds\n        meanStepMs\n      }\n      quality {\n        psnr\n        ssim\n      }\n    }\n  }\n"): typeof import('./graphql.ts').WebModelsDocument;
/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "\n  mutation WebGenerate($input: GenerateImageInput!) {\n    generateImage(input: $input) {\n      __typename\n      ... on MutationGenerateImageSuccess {\n        data {\n          id\n          jobId\n          status\n          totalSteps\n          width\n          height\n        }\n      }\n      ... on ValidationError {\n        field\n        message\n      }\n      ... on QueueFullError {\n        message\n        retryAfterSeconds\n      }\n      ... on UnknownModelError {\n        message\n        available\n      }\n      ... on LoraError {\n        code\n        message\n      }\n    }\n  }\n"): typeof import('./graphql.ts').WebGenerateDocument;
/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "\n  query WebLoras {\n    loras {\n      __typename\n      ... on QueryLorasSuccess {\n        data {\n          __typename\n          name\n          sizeBytes\n          ... on LoraFile {\n            format\n            rank\n            strength\n          }\n        }\n      }\n      ... on LoraError {\n        message\n      }\n    }\n  }\n"): typeof import('./graphql.ts').WebLorasDocument;
/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "\n  mutation WebCancel($id: ID!) {\n    cancelJob(id: $id) {\n      __typename\n      ... on MutationCancelJobSuccess {\n        data {\n          id\n          status\n        }\n      }\n      ... on NotFoundError {\n        message\n      }\n    }\n  }\n"): typeof import('./graphql.ts').WebCancelDocument;
/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "\n  query WebRecentJobs($first: Int!) {\n    jobs(first: $first) {\n      edges {\n        node {\n          id\n          jobId\n          status\n          prompt\n          width\n          height\n          steps\n          createdAt\n          model {\n            mode\n          }\n          images {\n            url\n            width\n            height\n          }\n        }\n      }\n    }\n  }\n"): typeof import('./graphql.ts').WebRecentJobsDocument;
/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "\n  subscription WebJobProgress($id: ID!) {\n    jobProgress(id: $id) {\n      __typename\n      ... on JobSnapshotEvent {\n        status\n        step\n        totalSteps\n        etaMs\n        queuePosition\n        job {\n          previewUrl\n          images {\n            url\n            width\n            height\n            format\n          }\n        }\n      }\n      ... on JobStartedEvent {\n        totalSteps\n      }\n      ... on JobStepEvent {\n        step\n        totalSteps\n        etaMs\n        previewUrl\n      }\n      ... on JobSucceededEvent {\n        images {\n          url\n          width\n          height\n          format\n        }\n      }\n      ... on JobFailedEvent {\n        code\n        message\n      }\n      ... on JobCanceledEvent {\n        reason\n      }\n      ... on NotFoundError {\n        message\n      }\n    }\n  }\n"): typeof import('./graphql.ts').WebJobProgressDocument;


export function graphql(source: string) {
  return (documents as any)[source] ?? {};
}
