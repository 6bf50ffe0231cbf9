import { mkdtemp, readdir, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { ImageStore } from '../../../src/service/image-store.ts';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function store(options: { maxAgeMs?: number; maxBytes?: number } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'fluxql-store-'));
  dirs.push(dir);
  const s = await ImageStore.create({ dir, ...options });
  return s;
}

const rgb = (w: number, h: number, v = 7) => ({ width: w, height: h, data: new Uint8Array(w * h * 3).fill(v) });

describe('ImageStore', () => {
  it('writes decodable files with the right content type', async () => {
    const s = await store();
    const img = await s.save('job1', 0, 5, rgb(32, 16), { format: 'jpeg', quality: 90 });
    expect(img).toMatchObject({ fileName: 'job1-0.jpg', contentType: 'image/jpeg', width: 32, height: 16, seed: 5 });
    const file = s.resolve(img.fileName);
    expect(file?.contentType).toBe('image/jpeg');
    const meta = await sharp(file?.path).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 32, 16]);
    s.close();
  });

  it('refuses names it never writes (no path traversal)', async () => {
    const s = await store();
    expect(s.resolve('../etc/passwd')).toBeUndefined();
    expect(s.resolve('a.gif')).toBeUndefined();
    expect(s.resolve('.hidden.tmp')).toBeUndefined();
    s.close();
  });

  it('removes files past the age limit, then the oldest over the size limit', async () => {
    const s = await store({ maxAgeMs: 60_000, maxBytes: 1 });
    const a = await s.save('a', 0, 1, rgb(16, 16, 1), { format: 'png' });
    const b = await s.save('b', 0, 1, rgb(16, 16, 2), { format: 'png' });
    const old = (Date.now() - 120_000) / 1000;
    await utimes(join(s.dir, a.fileName), old, old);
    const res = await s.sweep();
    // a is too old; b alone is still over 1 byte, so it goes too.
    expect(res.removed).toBe(2);
    expect(await readdir(s.dir)).toEqual([]);
    void b;
    s.close();
  });

  it('keeps files within both limits', async () => {
    const s = await store({ maxAgeMs: 60_000, maxBytes: 10_000_000 });
    await s.save('c', 0, 1, rgb(16, 16), { format: 'webp' });
    expect((await s.sweep()).removed).toBe(0);
    s.close();
  });
});
