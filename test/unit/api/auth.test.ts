/** @file The one bearer-token parser of every transport (src/api/auth.ts). */
import { describe, expect, it } from 'vitest';
import { bearerToken, isAuthorizedBearer } from '../../../src/api/auth.ts';

describe('bearerToken', () => {
  it('takes the token of `Bearer <token>`, scheme in any case, trimmed', () => {
    expect(bearerToken('Bearer abc')).toBe('abc');
    expect(bearerToken('bearer   abc  ')).toBe('abc');
    expect(bearerToken('BEARER abc')).toBe('abc');
  });

  it('finds no token without the scheme, unless a bare token is allowed', () => {
    expect(bearerToken('abc')).toBeUndefined();
    expect(bearerToken('Basic abc')).toBeUndefined();
    expect(bearerToken('abc', true)).toBe('abc');
    expect(bearerToken('Bearer abc', true)).toBe('abc');
    expect(bearerToken(undefined, true)).toBeUndefined();
    expect(bearerToken(42, true)).toBeUndefined();
  });
});

describe('isAuthorizedBearer', () => {
  it('lets everything through without a configured token', () => {
    expect(isAuthorizedBearer(undefined, undefined)).toBe(true);
  });

  it('needs the exact token when one is configured', () => {
    expect(isAuthorizedBearer('Bearer s3cret', 's3cret')).toBe(true);
    expect(isAuthorizedBearer('Bearer s3cre', 's3cret')).toBe(false);
    expect(isAuthorizedBearer(undefined, 's3cret')).toBe(false);
    expect(isAuthorizedBearer('s3cret', 's3cret')).toBe(false);
    expect(isAuthorizedBearer('s3cret', 's3cret', true)).toBe(true);
  });
});
