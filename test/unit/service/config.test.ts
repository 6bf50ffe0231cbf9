import { describe, expect, it } from 'vitest';
import { ConfigError, EMBEDDED_MODEL_DIR, loadConfig } from '../../../src/config.ts';

describe('loadConfig', () => {
  it('defaults to the embedded model, batch 4, port 8000', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({ modelRepo: EMBEDDED_MODEL_DIR, modelSize: 'original', modelBatch: 4, port: 8000 });
    expect(c.authToken).toBeUndefined();
  });

  it('reads TheStage-style variables', () => {
    const c = loadConfig({
      MODEL_REPO: '/models/x',
      MODEL_SIZE: 'S',
      MODEL_BATCH: '8',
      AUTH_TOKEN: 'tok',
      PORT: '0',
      HOST: '127.0.0.1',
      IMAGE_DIR: '/tmp/imgs',
      MAX_QUEUE_DELAY_MS: '5',
      MAX_QUEUE_SIZE: '3',
      PUBLIC_URL: 'https://img.example.com/',
    });
    expect(c).toMatchObject({
      modelRepo: '/models/x',
      modelSize: 's',
      modelBatch: 8,
      authToken: 'tok',
      port: 0,
      host: '127.0.0.1',
      imageDir: '/tmp/imgs',
      maxQueueDelayMs: 5,
      maxQueueSize: 3,
      publicUrl: 'https://img.example.com',
    });
  });

  it('names the bad variable', () => {
    expect(() => loadConfig({ MODEL_BATCH: 'four' })).toThrow(ConfigError);
    expect(() => loadConfig({ MODEL_BATCH: 'four' })).toThrow(/MODEL_BATCH/);
    expect(() => loadConfig({ MODEL_SIZE: 'huge' })).toThrow(/MODEL_SIZE/);
    expect(() => loadConfig({ PORT: '70000' })).toThrow(/PORT/);
  });

  it('keeps the control image SSRF guard on unless CONTROL_IMAGE_ALLOW_PRIVATE_URLS turns it off', () => {
    const allow = (v?: string) =>
      loadConfig(v === undefined ? {} : { CONTROL_IMAGE_ALLOW_PRIVATE_URLS: v }).controlImageAllowPrivateUrls;
    expect([allow(), allow(''), allow('0'), allow('false'), allow('no')]).toEqual([false, false, false, false, false]);
    expect([allow('1'), allow('true'), allow(' YES '), allow('on')]).toEqual([true, true, true, true]);
    expect(() => allow('maybe')).toThrow(/CONTROL_IMAGE_ALLOW_PRIVATE_URLS/);
  });
});
