/**
 * @file Control images from API values (src/service/media/control-image.ts): uploads, base64, data URLs and http URLs
 * served by a local server on 127.0.0.1 (fetched with `allowPrivateAddresses`, which the SSRF guard otherwise refuses),
 * decoded by sharp; every refusal is a ControlImageError naming the field.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ControlImageError,
  decodeImageBytes,
  fetchImageBytes,
  isPublicAddress,
  loadControlImage,
} from '../../../../src/service/media/control-image.ts';

/** A 3×2 RGB image with distinct pixels, `[H, W, 3]`. */
const PIXELS = Uint8Array.from([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
let png: Buffer;
let rgbaPng: Buffer;
let grayPng: Buffer;
let rotatedJpeg: Buffer;
let server: Server;
let base: string;

beforeAll(async () => {
  png = await sharp(PIXELS, { raw: { width: 3, height: 2, channels: 3 } })
    .png()
    .toBuffer();
  const rgba = Uint8Array.from({ length: 3 * 2 * 4 }, (_, i) =>
    i % 4 === 3 ? 7 : PIXELS[Math.floor(i / 4) * 3 + (i % 4)]!,
  );
  rgbaPng = await sharp(rgba, { raw: { width: 3, height: 2, channels: 4 } })
    .png()
    .toBuffer();
  grayPng = await sharp(Uint8Array.from([0, 100, 200, 255]), { raw: { width: 2, height: 2, channels: 1 } })
    .png()
    .toBuffer();
  // EXIF orientation 6 (rotate 90° clockwise to display): stored 4×2, shown 2×4.
  rotatedJpeg = await sharp(new Uint8Array(4 * 2 * 3).fill(128), { raw: { width: 4, height: 2, channels: 3 } })
    .jpeg()
    .withMetadata({ orientation: 6 })
    .toBuffer();

  server = createServer((req, res) => {
    switch (req.url) {
      case '/ok.png':
        res.writeHead(200, { 'content-type': 'image/png' }).end(png);
        return;
      case '/redirect':
        res.writeHead(302, { location: '/ok.png' }).end();
        return;
      case '/redirect-loopback':
        res.writeHead(302, { location: `http://localhost:${(server.address() as AddressInfo).port}/ok.png` }).end();
        return;
      case '/redirect-file':
        res.writeHead(302, { location: 'file:///etc/passwd' }).end();
        return;
      case '/missing':
        res.writeHead(404).end('no');
        return;
      case '/text':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('hello, not an image');
        return;
      case '/declared-big':
        res.writeHead(200, { 'content-length': String(10_000) }).end(Buffer.alloc(10_000));
        return;
      case '/chunked-big':
        // No length header: the limit must hold while reading.
        res.writeHead(200, { 'content-type': 'image/png' });
        for (let i = 0; i < 10; i++) res.write(Buffer.alloc(1000));
        res.end();
        return;
      case '/hang':
        return; // never answers: only the timeout ends it
      default:
        res.writeHead(500).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
});

/** Fetching from the local test server needs the SSRF guard off. */
const LOCAL = { allowPrivateAddresses: true } as const;

const refused = (code: string, param = 'controlImage') =>
  expect.objectContaining({ name: 'ControlImageError', code, param });

describe('loadControlImage', () => {
  it('decodes uploads, base64, data URLs and http URLs to the same RGB pixels', async () => {
    const expected = { width: 3, height: 2, data: PIXELS };
    expect(await loadControlImage(new Uint8Array(png))).toEqual(expected);
    expect(await loadControlImage(png.toString('base64'))).toEqual(expected);
    expect(await loadControlImage(` ${png.toString('base64url')}\n`)).toEqual(expected);
    expect(await loadControlImage(`data:image/png;base64,${png.toString('base64')}`)).toEqual(expected);
    expect(await loadControlImage(`${base}/ok.png`, LOCAL)).toEqual(expected);
    expect(await loadControlImage(`${base}/redirect`, LOCAL)).toEqual(expected);
  });

  it('drops alpha, expands grey to RGB and applies the EXIF orientation', async () => {
    expect(await decodeImageBytes(rgbaPng)).toEqual({ width: 3, height: 2, data: PIXELS });
    const gray = await decodeImageBytes(grayPng);
    expect(gray.data).toEqual(Uint8Array.from([0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255]));
    const rotated = await decodeImageBytes(rotatedJpeg);
    expect([rotated.width, rotated.height]).toEqual([2, 4]);
  });

  it('refuses bad input with typed errors naming the field', async () => {
    await expect(loadControlImage('not base64 at all!')).rejects.toThrow(ControlImageError);
    await expect(loadControlImage('not base64 at all!')).rejects.toEqual(refused('invalid_input'));
    await expect(loadControlImage(Buffer.from('hello').toString('base64'))).rejects.toEqual(refused('invalid_image'));
    await expect(loadControlImage(new Uint8Array(0))).rejects.toEqual(refused('invalid_image'));
    await expect(loadControlImage('data:text/plain;base64,aGVsbG8=')).rejects.toEqual(refused('invalid_input'));
    await expect(loadControlImage('data:image/png,rawbytes')).rejects.toEqual(refused('invalid_input'));
    await expect(loadControlImage('file:///etc/passwd')).rejects.toEqual(refused('unsupported_url'));
    await expect(loadControlImage('ftp://127.0.0.1/x.png')).rejects.toEqual(refused('unsupported_url'));
    await expect(loadControlImage(png.toString('base64'), { param: 'control_image', maxBytes: 10 })).rejects.toEqual(
      refused('too_large', 'control_image'),
    );
    await expect(loadControlImage(new Uint8Array(png), { maxPixels: 5 })).rejects.toEqual(refused('too_large'));
  });
});

describe('fetchImageBytes', () => {
  it('fails on HTTP errors, non-images, redirects off http and unreachable hosts', async () => {
    await expect(fetchImageBytes(`${base}/missing`, LOCAL)).rejects.toEqual(refused('fetch_failed'));
    await expect(loadControlImage(`${base}/text`, LOCAL)).rejects.toEqual(refused('invalid_image'));
    await expect(fetchImageBytes(`${base}/redirect-file`, LOCAL)).rejects.toEqual(refused('fetch_failed'));
    // A closed port on the loopback interface: connection refused.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    await expect(fetchImageBytes(`http://127.0.0.1:${port}/x.png`, LOCAL)).rejects.toEqual(refused('fetch_failed'));
  });

  it('enforces the byte limit from the header and while streaming', async () => {
    await expect(fetchImageBytes(`${base}/declared-big`, { ...LOCAL, maxBytes: 5000 })).rejects.toEqual(
      refused('too_large'),
    );
    await expect(fetchImageBytes(`${base}/chunked-big`, { ...LOCAL, maxBytes: 5000 })).rejects.toEqual(
      refused('too_large'),
    );
    expect((await fetchImageBytes(`${base}/chunked-big`, { ...LOCAL, maxBytes: 20_000 })).length).toBe(10_000);
  });

  it('gives up on a server that never answers', async () => {
    await expect(fetchImageBytes(`${base}/hang`, { ...LOCAL, timeoutMs: 200 })).rejects.toEqual(refused('timeout'));
  });
});

describe('SSRF guard', () => {
  it('refuses loopback, private, link-local, CGNAT and unique-local hosts unless allowed', async () => {
    const port = (server.address() as AddressInfo).port;
    for (const host of [
      '127.0.0.1',
      'localhost', // a name: refused by what it resolves to
      '[::1]',
      '[::ffff:127.0.0.1]',
      '10.1.2.3',
      '172.16.0.1',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '[fd00::1]',
      '[fe80::1]',
    ]) {
      await expect(loadControlImage(`http://${host}:${port}/ok.png`), host).rejects.toEqual(refused('forbidden_url'));
    }
    await expect(fetchImageBytes(`${base}/redirect`)).rejects.toEqual(refused('forbidden_url'));
    // Allowed: the same hosts are fetched, and a redirect to a name is resolved and followed.
    expect((await fetchImageBytes(`http://localhost:${port}/ok.png`, LOCAL)).length).toBe(png.length);
    expect((await fetchImageBytes(`${base}/redirect-loopback`, LOCAL)).length).toBe(png.length);
  });

  it('classifies addresses, IPv4 embedded in IPv6 included', () => {
    for (const a of ['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '2606:4700::1111', '64:ff9b::808:808']) {
      expect(isPublicAddress(a), a).toBe(true);
    }
    for (const a of [
      '127.0.0.53',
      '10.0.0.1',
      '172.31.255.255',
      '192.168.0.1',
      '169.254.0.1',
      '100.127.255.255',
      '224.0.0.1',
      '255.255.255.255',
      '::',
      '::1',
      '::ffff:10.0.0.1',
      '64:ff9b::a00:1', // NAT64 of 10.0.0.1
      '2002:7f00:1::', // 6to4 of 127.0.0.1
      'fc00::1',
      'fe80::1%eth0',
      'ff02::1',
      'not-an-ip',
    ]) {
      expect(isPublicAddress(a), a).toBe(false);
    }
  });
});
