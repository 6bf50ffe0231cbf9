import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Authenticator, bearerToken, safeEqual } from '../../../src/api/auth.ts';
import { ConfigError, loadConfig, parseApiKeys } from '../../../src/config.ts';

describe('Authenticator', () => {
  const auth = new Authenticator([
    { key: 'alice-key-0001', name: 'alice', admin: false },
    { key: 'ops-key-000003', name: 'ops', admin: true },
  ]);

  it('resolves keys to callers and refuses others', () => {
    expect(auth.authenticate('alice-key-0001')).toEqual({ ok: true, caller: { name: 'alice', admin: false } });
    expect(auth.authenticate('ops-key-000003')).toEqual({ ok: true, caller: { name: 'ops', admin: true } });
    expect(auth.authenticate('alice-key-000')).toEqual({ ok: false });
    expect(auth.authenticate('alice-key-00011')).toEqual({ ok: false });
    expect(auth.authenticate(undefined)).toEqual({ ok: false });
  });

  it('allows everyone, with no caller, when there are no keys', () => {
    expect(new Authenticator([]).authenticate(undefined)).toEqual({ ok: true });
    expect(new Authenticator([]).signPath('/images/x.png')).toBe('/images/x.png');
  });

  it('signs image paths so only the same path verifies', () => {
    const signed = auth.signPath('/images/a-0.png');
    const sig = new URL(signed, 'http://x').searchParams.get('sig');
    expect(auth.verifyPath('/images/a-0.png', sig)).toBe(true);
    expect(auth.verifyPath('/images/b-0.png', sig)).toBe(false);
    expect(auth.verifyPath('/images/a-0.png', null)).toBe(false);
    // Another deployment (other keys) does not accept it.
    expect(
      new Authenticator([{ key: 'other-key-0001', name: 'x', admin: false }]).verifyPath('/images/a-0.png', sig),
    ).toBe(false);
  });

  it('parses bearer headers and compares secrets of any length', () => {
    expect(bearerToken('Bearer abc')).toBe('abc');
    expect(bearerToken('bearer   abc  ')).toBe('abc');
    expect(bearerToken('Basic abc')).toBeUndefined();
    expect(bearerToken(undefined)).toBeUndefined();
    expect(safeEqual('a', 'a')).toBe(true);
    expect(safeEqual('a', 'ab')).toBe(false);
  });
});

describe('API_KEYS / API_KEYS_FILE', () => {
  it('reads names and roles from env and file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fluxql-keys-'));
    try {
      const file = join(dir, 'keys.json');
      writeFileSync(file, JSON.stringify({ 'file-key-00001': { name: 'ops', role: 'admin' } }));
      const c = loadConfig({ API_KEYS: '{"env-key-000001": "alice"}', API_KEYS_FILE: file });
      expect(c.apiKeys).toEqual([
        { key: 'file-key-00001', name: 'ops', admin: true },
        { key: 'env-key-000001', name: 'alice', admin: false },
      ]);
      expect(() => loadConfig({ API_KEYS_FILE: join(dir, 'missing.json') })).toThrow(/API_KEYS_FILE/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names the variable on bad input', () => {
    expect(() => parseApiKeys('not json', 'API_KEYS')).toThrow(ConfigError);
    expect(() => parseApiKeys('{"short": "x"}', 'API_KEYS')).toThrow(/at least 8/);
    expect(() => parseApiKeys('{"long-enough-key": {"name": "x", "role": "root"}}', 'API_KEYS')).toThrow(/API_KEYS/);
  });

  it('reads the edge limits', () => {
    const c = loadConfig({
      WS_MAX_PAYLOAD: '4096',
      GRAPHQL_MAX_DEPTH: '8',
      MAX_GENERATIONS_PER_OPERATION: '2',
      JOB_TIMEOUT_S: '30',
      SHUTDOWN_GRACE_S: '5',
      CORS_ORIGINS: 'https://a.example, http://localhost:3000/',
    });
    expect(c).toMatchObject({
      wsMaxPayload: 4096,
      maxGenerationsPerOperation: 2,
      jobTimeoutSeconds: 30,
      shutdownGraceSeconds: 5,
      corsOrigins: ['https://a.example', 'http://localhost:3000'],
    });
    expect(c.graphqlLimits.maxDepth).toBe(8);
    expect(() => loadConfig({ CORS_ORIGINS: 'a.example' })).toThrow(/CORS_ORIGINS/);
  });
});
