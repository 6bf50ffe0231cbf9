/**
 * @file The one place the service layer reaches into `pipeline/`: the step-level executor contract and image
 * encoding. Keeping it to one file makes the layer boundary easy to check and to move to `pipeline/index.ts`.
 */
export type {
  ModelInfo,
  RgbImage,
  SampleHandle,
  SampleRequest,
  StepExecutor,
  StepResult,
} from '../pipeline/executor.ts';
// TODO(api): switch both to '../pipeline/index.ts' once the lead re-exports these there.
export { contentTypeOf, encodeImage, extensionOf, IMAGE_FORMATS, type ImageFormat } from '../pipeline/image.ts';
