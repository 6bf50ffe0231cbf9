import { describe, expect, it } from 'vitest';
import {
  ConfigError,
  EMBEDDED_MODEL_DIR,
  loadConfig,
  loadEngineChoice,
  loadPipelineSettings,
} from '../../../src/config.ts';

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

  it('has one engine cache setting: CACHE_DIR, with FLUXQL_CACHE_DIR as its alias, the same for server and tools', () => {
    expect(loadConfig({}).cacheDir).toBeUndefined();
    expect(loadConfig({ CACHE_DIR: '/c/a' }).cacheDir).toBe('/c/a');
    expect(loadConfig({ FLUXQL_CACHE_DIR: '/c/b' }).cacheDir).toBe('/c/b');
    expect(loadConfig({ CACHE_DIR: '/c/a', FLUXQL_CACHE_DIR: '/c/b' }).cacheDir).toBe('/c/a');
    for (const env of [{ CACHE_DIR: '/c/a' }, { FLUXQL_CACHE_DIR: '/c/b' }, { LORA_DIR: '/l', FLUXQL_ORT_SPIN: '1' }]) {
      const c = loadConfig(env);
      expect(loadPipelineSettings(env)).toEqual({
        ortSpin: c.ortSpin,
        ...(c.cacheDir ? { cacheDir: c.cacheDir } : {}),
        ...(c.loraDir ? { loraDir: c.loraDir } : {}),
      });
    }
  });

  it('reads LORA_DIR and FLUXQL_ORT_SPIN (off unless set)', () => {
    expect(loadConfig({}).ortSpin).toBe(false);
    expect(loadConfig({}).loraDir).toBeUndefined();
    expect(loadConfig({ FLUXQL_ORT_SPIN: '1', LORA_DIR: '/loras' })).toMatchObject({
      ortSpin: true,
      loraDir: '/loras',
    });
    expect(() => loadPipelineSettings({ FLUXQL_ORT_SPIN: 'sometimes' })).toThrow(/FLUXQL_ORT_SPIN/);
    // The tools read only their own variables: a bad PORT does not stop `fluxql compile`.
    expect(loadPipelineSettings({ PORT: 'x', CACHE_DIR: '/c' })).toEqual({ ortSpin: false, cacheDir: '/c' });
  });

  it('reads CUDA_STEP_CACHE as the native engine step-cache threshold (off unless set)', () => {
    expect(loadConfig({}).cudaStepCache).toBeUndefined();
    expect(loadConfig({ CUDA_STEP_CACHE: '0.1' }).cudaStepCache).toBe(0.1);
    expect(loadConfig({ CUDA_STEP_CACHE: '0' }).cudaStepCache).toBe(0);
    for (const bad of ['-1', 'x', 'Infinity']) {
      expect(() => loadConfig({ CUDA_STEP_CACHE: bad })).toThrow(ConfigError);
      expect(() => loadConfig({ CUDA_STEP_CACHE: bad })).toThrow(/CUDA_STEP_CACHE/);
    }
  });

  it('reads CUDA_PLANNER_FP8ROW as the planner routing fp8row (off unless set)', () => {
    expect(loadConfig({}).cudaPlannerFp8row).toBe(false);
    expect(loadConfig({ CUDA_PLANNER_FP8ROW: '1' }).cudaPlannerFp8row).toBe(true);
    expect(loadConfig({ CUDA_PLANNER_FP8ROW: 'off' }).cudaPlannerFp8row).toBe(false);
    expect(() => loadConfig({ CUDA_PLANNER_FP8ROW: 'sometimes' })).toThrow(/CUDA_PLANNER_FP8ROW/);
  });

  it('warms every mode from the start unless WARM_MODES narrows it', () => {
    expect(loadConfig({}).warmModes).toBe('all');
    expect(loadConfig({ WARM_MODES: 'ALL' }).warmModes).toBe('all');
    expect(loadConfig({ WARM_MODES: 'default' }).warmModes).toEqual([]);
    expect(loadConfig({ WARM_MODES: 'xl, S' }).warmModes).toEqual(['xl', 's']);
    expect(() => loadConfig({ WARM_MODES: 'xl,huge' })).toThrow(/WARM_MODES/);
  });

  it('reads the log and webhook settings, with safe defaults', () => {
    expect(loadConfig({})).toMatchObject({
      logLevel: 'info',
      logPretty: false,
      webhookAllowPrivateUrls: false,
      webhookMaxAttempts: 5,
      webhookRetryBaseMs: 1000,
    });
    expect(loadConfig({}).webhookSecret).toBeUndefined();
    expect(
      loadConfig({
        LOG_LEVEL: ' Debug ',
        LOG_PRETTY: '1',
        WEBHOOK_SECRET: 's'.repeat(16),
        WEBHOOK_ALLOW_PRIVATE_URLS: 'yes',
        WEBHOOK_MAX_ATTEMPTS: '3',
        WEBHOOK_RETRY_BASE_MS: '250',
      }),
    ).toMatchObject({
      logLevel: 'debug',
      logPretty: true,
      webhookSecret: 's'.repeat(16),
      webhookAllowPrivateUrls: true,
      webhookMaxAttempts: 3,
      webhookRetryBaseMs: 250,
    });
    expect(() => loadConfig({ LOG_LEVEL: 'verbose' })).toThrow(/LOG_LEVEL/);
    expect(() => loadConfig({ WEBHOOK_SECRET: 'short' })).toThrow(/WEBHOOK_SECRET/);
    expect(() => loadConfig({ WEBHOOK_MAX_ATTEMPTS: '0' })).toThrow(/WEBHOOK_MAX_ATTEMPTS/);
  });
});

describe('loadEngineChoice', () => {
  it('reads ENGINE as serve does: onnx when unset or empty, the named engine, a typed error otherwise', () => {
    expect(loadEngineChoice({})).toBe('onnx');
    expect(loadEngineChoice({ ENGINE: '' })).toBe('onnx');
    expect(loadEngineChoice({ ENGINE: 'cuda' })).toBe('cuda');
    expect(loadConfig({ ENGINE: 'cuda' }).engine).toBe(loadEngineChoice({ ENGINE: 'cuda' }));
    expect(() => loadEngineChoice({ ENGINE: 'tensorrt' })).toThrow(ConfigError);
  });
});
