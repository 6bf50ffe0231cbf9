/**
 * @file Streams large initializers into an ONNX external-data file while a graph is being built, so a compiler never
 * holds a whole model's weights in memory and the protobuf stays far under its 2 GB limit.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { basename } from 'node:path';

/** Alignment of each tensor in the data file: ORT memory-maps external data, and aligned tensors map cleanly. */
const ALIGN = 64;

/** Appends tensors to one external-data file; see the file header. */
export class ExternalDataWriter {
  /** Location recorded in the model: the file name, resolved by ORT relative to the model file. */
  readonly location: string;
  private fd: number | undefined;
  private offset = 0;

  constructor(readonly path: string) {
    this.location = basename(path);
    this.fd = openSync(path, 'w');
  }

  /** Writes `bytes` at the next aligned offset; returns where they landed. */
  append(bytes: Uint8Array): { location: string; offset: number; length: number } {
    if (this.fd === undefined) throw new Error(`external data ${this.path} is already closed`);
    const pad = (ALIGN - (this.offset % ALIGN)) % ALIGN;
    if (pad) writeSync(this.fd, new Uint8Array(pad));
    const offset = this.offset + pad;
    let written = 0;
    while (written < bytes.byteLength) written += writeSync(this.fd, bytes, written, bytes.byteLength - written);
    this.offset = offset + bytes.byteLength;
    return { location: this.location, offset, length: bytes.byteLength };
  }

  /** Bytes written so far. */
  get size(): number {
    return this.offset;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
