/**
 * @file Values with typed arrays inside, as one frame (`frames.ts`): the JSON header carries the value with every
 * typed array replaced by a reference `{$bin: i, type}`, the payload carries the arrays' bytes back to back, each
 * part starting at a multiple of 8 so the receiver can view it in place (no copy) as any element type.
 */
import { encodeFrame, type Frame, type FrameHeader } from './frames.ts';

/** Element types that travel as binary parts (what the executors exchange: pixels, latents, ids). */
const ARRAY_TYPES = {
  Uint8Array,
  Int8Array,
  Uint16Array,
  Int16Array,
  Uint32Array,
  Int32Array,
  Float32Array,
  Float64Array,
} as const;
type ArrayTypeName = keyof typeof ARRAY_TYPES;

const ALIGN = 8;

interface BinRef {
  $bin: number;
  type: ArrayTypeName;
}

/** Encodes `{op, id, body: value}` as one frame; `extra` header fields are added as given. */
export function encodeMessage(op: string, id: number, value: unknown, extra: Record<string, unknown> = {}): Buffer {
  const parts: ArrayBufferView[] = [];
  const spans: [number, number][] = [];
  let offset = 0;
  const replace = (v: unknown): unknown => {
    if (ArrayBuffer.isView(v)) {
      // `instanceof`, not the constructor's name: a Buffer travels as the Uint8Array it is.
      const type = (Object.keys(ARRAY_TYPES) as ArrayTypeName[]).find((t) => v instanceof ARRAY_TYPES[t]);
      if (!type) throw new TypeError(`cannot send a ${v.constructor.name} to an engine process`);
      const pad = (ALIGN - (offset % ALIGN)) % ALIGN;
      if (pad > 0) parts.push(new Uint8Array(pad));
      offset += pad;
      spans.push([offset, v.byteLength]);
      parts.push(v);
      offset += v.byteLength;
      return { $bin: spans.length - 1, type } satisfies BinRef;
    }
    if (Array.isArray(v)) return v.map(replace);
    if (v && typeof v === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = replace(x);
      return out;
    }
    return v;
  };
  const body = replace(value);
  return encodeFrame({ ...extra, op, id, body, parts: spans } as FrameHeader, parts);
}

/** The value of a frame made by {@link encodeMessage}; typed arrays are views into the frame's payload. */
export function decodeMessage(frame: Frame): unknown {
  const spans = (frame.header.parts ?? []) as [number, number][];
  const { payload } = frame;
  const restore = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(restore);
    if (v && typeof v === 'object') {
      const ref = v as Partial<BinRef>;
      if (typeof ref.$bin === 'number' && typeof ref.type === 'string' && ref.type in ARRAY_TYPES) {
        const [off, len] = spans[ref.$bin] ?? [0, 0];
        const Ctor = ARRAY_TYPES[ref.type];
        const start = payload.byteOffset + off;
        // Views need aligned starts; a payload that is not (never the case for FrameDecoder's copies) is copied.
        if (start % Ctor.BYTES_PER_ELEMENT === 0) {
          return new Ctor(payload.buffer as ArrayBuffer, start, len / Ctor.BYTES_PER_ELEMENT);
        }
        return new Ctor(payload.slice(off, off + len).buffer);
      }
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) out[k] = restore(x);
      return out;
    }
    return v;
  };
  return restore(frame.header.body);
}
