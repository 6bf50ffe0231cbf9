/**
 * @file Framing of the `fluxql-engine --serve` protocol (`engines/cuda/PROTOCOL.md`): every message is
 * `u32 LE header length H, u32 LE payload length P, H bytes of UTF-8 JSON header, P bytes of payload`.
 * Pure byte handling, no process or GPU: {@link encodeFrame} builds one frame, {@link FrameDecoder} cuts a byte
 * stream (chunks of any size) back into frames.
 */

/** A JSON header: every frame has `op`; requests may carry an `id`, which responses repeat. */
export interface FrameHeader {
  op: string;
  id?: number | string | null;
  [key: string]: unknown;
}

/** One decoded frame. `payload` is empty when the frame has none. */
export interface Frame {
  header: FrameHeader;
  payload: Uint8Array;
}

/** Bytes before the header: the two u32 lengths. */
export const FRAME_PREFIX_BYTES = 8;

/** Largest header accepted (a guard against reading garbage as a length). */
export const MAX_HEADER_BYTES = 1 << 20;

/** Largest payload accepted: 4 GiB − 1, the u32 limit (an RGB8 batch of 4 at 2048² is 48 MiB). */
export const MAX_PAYLOAD_BYTES = 0xffff_ffff;

/** The byte stream is not a valid frame sequence (bad length, header not JSON or without `op`). */
export class FrameError extends Error {
  override name = 'FrameError';
}

/**
 * Encodes one frame. `payload` may be several parts (e.g. CLIP ids, T5 ids, latents), written back to back.
 * @throws FrameError when the header has no `op` or a length does not fit a u32.
 */
export function encodeFrame(header: FrameHeader, payload: readonly ArrayBufferView[] | ArrayBufferView = []): Buffer {
  if (typeof header.op !== 'string' || header.op === '') throw new FrameError('frame header needs a string "op"');
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) throw new FrameError(`frame header of ${json.length} bytes is too large`);
  const parts = (Array.isArray(payload) ? payload : [payload]) as ArrayBufferView[];
  const bodies = parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength));
  const payloadBytes = bodies.reduce((n, b) => n + b.length, 0);
  if (payloadBytes > MAX_PAYLOAD_BYTES) throw new FrameError(`payload of ${payloadBytes} bytes does not fit a frame`);
  const prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
  prefix.writeUInt32LE(json.length, 0);
  prefix.writeUInt32LE(payloadBytes, 4);
  return Buffer.concat([prefix, json, ...bodies], FRAME_PREFIX_BYTES + json.length + payloadBytes);
}

/**
 * Incremental decoder: `push` chunks as they arrive, get back every frame they complete. A frame may span any
 * number of chunks and a chunk may hold several frames. After a {@link FrameError} the stream is unusable.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #need: { header: number; payload: number } | undefined;

  /** Bytes held that do not yet form a whole frame. */
  get bufferedBytes(): number {
    return this.#buffered + (this.#need ? FRAME_PREFIX_BYTES : 0);
  }

  /** Adds bytes; returns the frames completed by them, in order. @throws FrameError */
  push(chunk: Uint8Array): Frame[] {
    if (chunk.length > 0) {
      this.#chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.#buffered += chunk.length;
    }
    const out: Frame[] = [];
    for (;;) {
      if (!this.#need) {
        if (this.#buffered < FRAME_PREFIX_BYTES) break;
        const prefix = this.#take(FRAME_PREFIX_BYTES);
        const header = prefix.readUInt32LE(0);
        const payload = prefix.readUInt32LE(4);
        if (header === 0 || header > MAX_HEADER_BYTES) throw new FrameError(`bad frame header length ${header}`);
        this.#need = { header, payload };
      }
      const { header, payload } = this.#need;
      if (this.#buffered < header + payload) break;
      const headerBytes = this.#take(header);
      // Copy the payload out so the frame does not pin the stream's chunks.
      const body = payload > 0 ? new Uint8Array(this.#take(payload)) : new Uint8Array(0);
      this.#need = undefined;
      out.push({ header: parseHeader(headerBytes), payload: body });
    }
    return out;
  }

  /** Removes and returns the first `n` buffered bytes (n ≤ buffered). */
  #take(n: number): Buffer {
    const first = this.#chunks[0]!;
    let result: Buffer;
    if (first.length >= n) {
      result = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      result = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(result, off, 0, k);
        off += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#buffered -= n;
    return result;
  }
}

function parseHeader(bytes: Buffer): FrameHeader {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new FrameError(`frame header is not JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new FrameError('frame header is not a JSON object');
  }
  const h = parsed as FrameHeader;
  if (typeof h.op !== 'string') throw new FrameError('frame header has no "op"');
  return h;
}
