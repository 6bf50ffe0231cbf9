/**
 * @file Engine child processes spoken to in frames: the frame format (shared with the native CUDA engine's
 * protocol), values with typed arrays as frames, and the process with its death reported as a typed error. Imports
 * no ONNX Runtime, so a CUDA server does not load it.
 */
export { EngineExitedError, FramedProcess, type FramedProcessOptions, serveFrames } from './framed-process.ts';
export {
  encodeFrame,
  FRAME_PREFIX_BYTES,
  type Frame,
  FrameDecoder,
  FrameError,
  type FrameHeader,
  MAX_HEADER_BYTES,
} from './frames.ts';
export { decodeMessage, encodeMessage } from './message-codec.ts';
