/**
 * @file Images on disk (IMAGE_DIR): finished images and step previews, written once under unguessable, never
 * reused names (so they can be cached as immutable) and removed by age and by total size.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { StoredImage } from './jobs.ts';
import { contentTypeOf, encodeImage, extensionOf, type ImageFormat } from './media/image-codec.ts';
import type { RgbImage } from './pipeline.ts';

/** Where and how long images live. */
export interface ImageStoreOptions {
  dir: string;
  /** Files older than this are removed. @default 24 h */
  maxAgeMs?: number;
  /** Above this total, the oldest files are removed first. @default 2 GiB */
  maxBytes?: number;
  /** How often the cleanup runs. @default 10 min */
  sweepIntervalMs?: number;
}

/** A file the store can serve. */
export interface ServableImage {
  path: string;
  contentType: string;
}

const EXT_TO_FORMAT: Record<string, ImageFormat> = { png: 'png', webp: 'webp', jpg: 'jpeg' };
// Names we write ourselves: uuid-ish stem and one of our extensions. Anything else is refused (no traversal).
const NAME_RE = /^[A-Za-z0-9_-]{1,128}\.(png|webp|jpg)$/;

/** Files written and removed by the server; see the file comment. */
export class ImageStore {
  readonly dir: string;
  readonly #maxAgeMs: number;
  readonly #maxBytes: number;
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | undefined;

  private constructor(options: ImageStoreOptions) {
    this.dir = options.dir;
    this.#maxAgeMs = options.maxAgeMs ?? 24 * 3600_000;
    this.#maxBytes = options.maxBytes ?? 2 * 1024 ** 3;
    this.#intervalMs = options.sweepIntervalMs ?? 10 * 60_000;
  }

  /** Creates the directory and starts the periodic cleanup. */
  static async create(options: ImageStoreOptions): Promise<ImageStore> {
    const store = new ImageStore(options);
    await mkdir(store.dir, { recursive: true });
    store.#timer = setInterval(() => {
      store.sweep().catch(() => {});
    }, store.#intervalMs);
    // Cleanup must never keep the process alive on its own.
    store.#timer.unref();
    return store;
  }

  /** Encodes and writes one finished image. */
  async save(
    jobId: string,
    index: number,
    seed: number,
    rgb: RgbImage,
    encoding: { format: ImageFormat; quality?: number },
  ): Promise<StoredImage> {
    const bytes = await encodeImage(rgb, encoding);
    const fileName = `${jobId}-${index}.${extensionOf(encoding.format)}`;
    await this.#write(fileName, bytes);
    return {
      id: `${jobId}-${index}`,
      jobId,
      index,
      fileName,
      format: encoding.format,
      contentType: contentTypeOf(encoding.format),
      width: rgb.width,
      height: rgb.height,
      byteSize: bytes.byteLength,
      seed,
      createdAt: new Date(),
    };
  }

  /** Writes a preview (small, lossy WebP) and returns its URL path. */
  async savePreview(jobId: string, step: number, rgb: RgbImage): Promise<string> {
    const bytes = await encodeImage(rgb, { format: 'webp', quality: 60 });
    const fileName = `${jobId}-p${step}.webp`;
    await this.#write(fileName, bytes);
    return urlPathOf(fileName);
  }

  /** The file behind a URL name, or undefined for names the store never writes. Existence is not checked. */
  resolve(name: string): ServableImage | undefined {
    const m = NAME_RE.exec(name);
    const format = m ? EXT_TO_FORMAT[m[1] as string] : undefined;
    if (!format) return undefined;
    return { path: join(this.dir, name), contentType: contentTypeOf(format) };
  }

  /** Removes files past the age limit, then the oldest until under the size limit. */
  async sweep(now = Date.now()): Promise<{ removed: number; remainingBytes: number }> {
    const names = (await readdir(this.dir)).filter((n) => NAME_RE.test(n));
    const files: { name: string; mtime: number; size: number }[] = [];
    for (const name of names) {
      const s = await stat(join(this.dir, name)).catch(() => undefined);
      if (s?.isFile()) files.push({ name, mtime: s.mtimeMs, size: s.size });
    }
    files.sort((a, b) => a.mtime - b.mtime);
    let total = files.reduce((sum, f) => sum + f.size, 0);
    let removed = 0;
    for (const f of files) {
      const tooOld = now - f.mtime > this.#maxAgeMs;
      if (!tooOld && total <= this.#maxBytes) break;
      await rm(join(this.dir, f.name), { force: true });
      total -= f.size;
      removed++;
    }
    return { removed, remainingBytes: total };
  }

  /** Stops the periodic cleanup. Files stay. */
  close(): void {
    clearInterval(this.#timer);
  }

  // Write to a temp name and rename, so a reader never sees a half-written file at a served name.
  async #write(fileName: string, bytes: Buffer): Promise<void> {
    const tmp = join(this.dir, `.${randomUUID()}.tmp`);
    await writeFile(tmp, bytes);
    await rename(tmp, join(this.dir, fileName));
  }
}

/** URL path of a stored file. */
export function urlPathOf(fileName: string): string {
  return `/images/${fileName}`;
}
