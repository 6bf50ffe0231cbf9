/**
 * @file The CUDA engine client: spawns `fluxql-engine --serve` (engines/cuda) and speaks its framed protocol.
 * Runtime layer: imports nothing above `src/shared/`; the pipeline's `cuda-executor.ts` adapts it to the
 * step-level executor contract. Kept out of `../index.ts` so that a CUDA server does not load onnxruntime-node.
 */

export {
  encodeFrame,
  FRAME_PREFIX_BYTES,
  type Frame,
  FrameDecoder,
  FrameError,
  type FrameHeader,
  MAX_HEADER_BYTES,
} from '../process/frames.ts';
export {
  type CudaEditPrepareArgs,
  type CudaEncodeArgs,
  cudaEncode,
  cudaEncodeMoments,
  cudaPrepareEdit,
  editPrepareFrameOf,
  encodeFrameOf,
  type RequestFrame,
} from './edit-requests.ts';
export {
  type CudaCalibrateArgs,
  type CudaCalibrated,
  CudaEngineClient,
  type CudaEngineClientOptions,
  type CudaEngineInfo,
  type CudaLoaded,
  type CudaPlanCheck,
  type CudaPlanInfo,
  type CudaPlanSpec,
  type CudaPrecision,
  type CudaPrepareArgs,
  type CudaProgress,
  type CudaSampleProgress,
  type CudaStepCache,
  calibrateFrameOf,
  joinFrameOf,
} from './engine-client.ts';
export { CudaEngineError, CudaEngineExitedError, engineErrorFromFrame } from './errors.ts';
export { type CudaLoadComponent, type CudaLoadSpec, type CudaMapEntry, cudaLoadSpec } from './load-spec.ts';
export {
  type CudaLoraLayer,
  type CudaLoraNorm,
  type CudaLoraState,
  cudaLoraLoad,
  cudaLoraUnload,
  loraLoadFramesOf,
  MAX_LORA_FRAME_BYTES,
} from './lora-requests.ts';
