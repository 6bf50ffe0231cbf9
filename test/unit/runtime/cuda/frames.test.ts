/**
 * The CUDA engine protocol's framing (engines/cuda/PROTOCOL.md) without a GPU: frames encode to the documented
 * bytes and decode back however the stream is cut; malformed streams are refused. Plus the one engine-process path
 * that needs no engine: a binary that cannot be started fails calls with the typed exit error.
 */
import { describe, expect, it } from 'vitest';
import {
  CudaEngineClient,
  CudaEngineExitedError,
  encodeFrame,
  engineErrorFromFrame,
  type Frame,
  FrameDecoder,
  FrameError,
} from '../../../../src/runtime/cuda/index.ts';

/** Decodes `bytes` pushed in pieces of `size` bytes. */
function decodeInPieces(bytes: Uint8Array, size: number): Frame[] {
  const d = new FrameDecoder();
  const out: Frame[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(...d.push(bytes.subarray(i, i + size)));
  expect(d.bufferedBytes).toBe(0);
  return out;
}

describe('CUDA engine frames', () => {
  it('lays a frame out as u32 LE header length, u32 LE payload length, JSON header, payload', () => {
    const payload = new Uint8Array([1, 2, 3]);
    const buf = encodeFrame({ op: 'decode', id: 7, job: 2 }, payload);
    const json = JSON.stringify({ op: 'decode', id: 7, job: 2 });
    expect(buf.readUInt32LE(0)).toBe(json.length);
    expect(buf.readUInt32LE(4)).toBe(3);
    expect(buf.subarray(8, 8 + json.length).toString('utf8')).toBe(json);
    expect([...buf.subarray(8 + json.length)]).toEqual([1, 2, 3]);
  });

  it('round-trips headers and multi-part typed payloads, whole or cut into any chunk size', () => {
    const clip = Int32Array.from({ length: 2 * 77 }, (_, i) => i * 3 - 50);
    const t5 = Int32Array.from({ length: 2 * 16 }, (_, i) => 32000 - i);
    const latents = Float32Array.from({ length: 2 * 24 * 64 }, (_, i) => Math.sin(i) * 1e3);
    const frames = [
      encodeFrame({ op: 'info', id: 1 }),
      encodeFrame({ op: 'prepare', id: 'p-2', batch: 2, sigmas: [1, 0.5, 0], prompt: 'ünïcødé 🌄' }, [
        clip,
        t5,
        latents.subarray(0),
      ]),
      encodeFrame({ op: 'image', id: 3, batch: 1, height: 2, width: 2 }, new Uint8Array(12).fill(255)),
    ];
    const stream = Buffer.concat(frames);
    for (const size of [1, 3, 8, 13, 4096, stream.length]) {
      const got = decodeInPieces(stream, size);
      expect(got.map((f) => f.header)).toEqual([
        { op: 'info', id: 1 },
        { op: 'prepare', id: 'p-2', batch: 2, sigmas: [1, 0.5, 0], prompt: 'ünïcødé 🌄' },
        { op: 'image', id: 3, batch: 1, height: 2, width: 2 },
      ]);
      expect(got[0]!.payload.length).toBe(0);
      const p = got[1]!.payload;
      expect(p.length).toBe(clip.byteLength + t5.byteLength + latents.byteLength);
      const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
      expect(view.getInt32(0, true)).toBe(clip[0]);
      expect(view.getInt32(clip.byteLength, true)).toBe(t5[0]);
      const lat = new Float32Array(p.slice(clip.byteLength + t5.byteLength).buffer);
      expect(lat).toEqual(latents);
      expect([...got[2]!.payload]).toEqual(new Array(12).fill(255));
    }
  });

  it('sends a typed-array view of a larger buffer as just the view', () => {
    const big = new Float32Array([9, 1, 2, 9]);
    const buf = encodeFrame({ op: 'x' }, big.subarray(1, 3));
    const [f] = decodeInPieces(buf, buf.length);
    expect(Array.from(new Float32Array(f!.payload.slice().buffer))).toEqual([1, 2]);
  });

  it('marks an error fatal from the frame\'s fatal field, or from an older engine\'s "CUDA error" prefix', () => {
    const device = engineErrorFromFrame('step', {
      message: 'CUDA error (cuBLAS) 13 (the GPU program failed)',
      fatal: true,
    });
    expect(device.fatal).toBe(true);
    expect(device.message).toBe('CUDA engine step: CUDA error (cuBLAS) 13 (the GPU program failed)');
    // A cuBLAS/cuDNN failure that is a device fault need not start with "CUDA error": the field decides.
    expect(engineErrorFromFrame('step', { message: 'cuDNN error 5000', fatal: true }).fatal).toBe(true);
    expect(
      engineErrorFromFrame('load', { message: 'transformer: 1 checkpoint tensor(s) not used', fatal: false }).fatal,
    ).toBe(false);
    expect(engineErrorFromFrame('step', { message: 'CUDA error an illegal memory access was encountered' }).fatal).toBe(
      true,
    );
    expect(engineErrorFromFrame('prepare', {}).message).toBe('CUDA engine prepare: unknown error');
  });

  it('decodes error frames like any other (the client turns them into CudaEngineError)', () => {
    const buf = encodeFrame({ op: 'error', id: 4, message: 'CUDA error an illegal memory access was encountered' });
    const [f] = decodeInPieces(buf, 5);
    expect(f!.header).toEqual({ op: 'error', id: 4, message: 'CUDA error an illegal memory access was encountered' });
  });

  it('refuses headers without op, non-JSON headers and impossible lengths', () => {
    expect(() => encodeFrame({ op: '' })).toThrow(FrameError);
    const raw = (header: string) => {
      const h = Buffer.from(header);
      const p = Buffer.alloc(8);
      p.writeUInt32LE(h.length, 0);
      return Buffer.concat([p, h]);
    };
    expect(() => new FrameDecoder().push(raw('{"id":1}'))).toThrow(/no "op"/);
    expect(() => new FrameDecoder().push(raw('not json'))).toThrow(FrameError);
    expect(() => new FrameDecoder().push(raw('[1]'))).toThrow(/not a JSON object/);
    const zero = Buffer.alloc(8);
    expect(() => new FrameDecoder().push(zero)).toThrow(/bad frame header length 0/);
    const huge = Buffer.alloc(8);
    huge.writeUInt32LE(0xffffffff, 0);
    expect(() => new FrameDecoder().push(huge)).toThrow(FrameError);
  });

  it('waits for the rest of a frame without consuming it', () => {
    const buf = encodeFrame({ op: 'latents', id: 1 }, new Float32Array(100));
    const d = new FrameDecoder();
    expect(d.push(buf.subarray(0, buf.length - 1))).toEqual([]);
    expect(d.bufferedBytes).toBe(buf.length - 1);
    expect(d.push(buf.subarray(buf.length - 1))).toHaveLength(1);
  });
});

describe('CUDA engine client without an engine', () => {
  it('fails calls with CudaEngineExitedError when the binary cannot be started', async () => {
    const client = CudaEngineClient.start({ bin: '/nonexistent/fluxql-engine' });
    const err = await client.info().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CudaEngineExitedError);
    expect((err as CudaEngineExitedError).code).toBe('engine_exited');
    expect((err as Error).message).toMatch(/could not be started.*ENOENT/);
    await client.exited;
    // Later calls fail the same way at once.
    await expect(client.release(1)).rejects.toBe(err);
  });
});
