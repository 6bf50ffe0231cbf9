/**
 * A bad-input corpus over real HTTP and WebSocket on the embedded model (port 0), generated from tables: REST
 * bodies, headers and methods (both dialects), GraphQL inputs, documents and ids, graphql-ws messages, broken
 * LoRA files and control images. Every case must get a typed error with the expected status and code (OpenAI
 * error bodies over REST, error types as data or coded GraphQL errors over GraphQL, close codes or error messages
 * over WebSocket); the server keeps answering `/healthz` throughout, and jobs accepted alongside all succeed.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { makeBflControlLora } from '../../src/cli/conformance/lora-reference.ts';
import { writeSafetensors } from '../../src/shared/weights/index.ts';
import { D, TINY_CONFIG, t, useTempDir, writeLora } from '../helpers/lora.ts';
import { disposeLeftovers, eventually, startTestServer } from '../helpers/test-server.ts';

const KEY = 'corpus-key-0001';
const AUTH = { authorization: `Bearer ${KEY}` };
const tempDir = useTempDir('corpus');
let url: string;
let loraDir: string;

/** One case and what it must get. */
interface Case {
  name: string;
  run: () => Promise<void>;
}
const cases: Case[] = [];
const add = (name: string, run: () => Promise<void>) => cases.push({ name, run });

// ---------------------------------------------------------------------------------------------------------- REST

interface RestExpect {
  status: number;
  /** Exact `error.code`, or any of a list. */
  code?: string | string[];
  param?: string | null;
}

async function rest(
  body: string | undefined,
  headers: Record<string, string>,
  want: RestExpect,
  method = 'POST',
  path = '/v1/images/generations',
) {
  const res = await fetch(`${url}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  const where = `${method} ${path} ${body?.slice(0, 120)} -> ${res.status} ${text.slice(0, 300)}`;
  expect(res.status, where).toBe(want.status);
  const err = (JSON.parse(text) as { error: { code: string; param: string | null; message: string } }).error;
  expect(typeof err.message, where).toBe('string');
  if (Array.isArray(want.code)) expect(want.code, where).toContain(err.code);
  else if (want.code) expect(err.code, where).toBe(want.code);
  else expect(err.code, where).toMatch(/^[a-z_]+$/);
  if (want.param !== undefined) expect(err.param, where).toBe(want.param);
}

const JSON_HEADERS = { 'content-type': 'application/json', ...AUTH };
const DIALECTS: Record<string, Record<string, string>> = {
  thestage: JSON_HEADERS,
  openai: { ...JSON_HEADERS, accept: 'application/json' },
};
const BASE = { prompt: 'a fox', width: 64, height: 64, num_inference_steps: 1 };

const MALFORMED_JSON = [
  '',
  '{',
  '}',
  '[]',
  '[1,2]',
  'null',
  '"text"',
  '42',
  'true',
  '{"prompt": "x",}',
  "{'prompt': 'x'}",
  '{"prompt": "x"',
  '{"prompt": undefined}',
  '\u0000\u0001',
  '{"a":1}{"b":2}',
];
for (const body of MALFORMED_JSON) {
  add(`REST malformed JSON ${JSON.stringify(body)}`, () =>
    rest(body, JSON_HEADERS, { status: 400, code: 'invalid_json' }),
  );
}

for (const type of [
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'text/json',
  'application/jsonx',
  'image/png',
]) {
  add(`REST content-type ${type}`, () =>
    rest(JSON.stringify(BASE), { 'content-type': type, ...AUTH }, { status: 415, code: 'unsupported_media_type' }),
  );
}

for (const [label, header] of [
  ['none', undefined],
  ['wrong key', `Bearer ${KEY}x`],
  ['basic', `Basic ${Buffer.from(`a:${KEY}`).toString('base64')}`],
  ['empty bearer', 'Bearer '],
  ['key without scheme', KEY],
] as const) {
  add(`REST auth ${label}`, () =>
    rest(
      JSON.stringify(BASE),
      { 'content-type': 'application/json', ...(header ? { authorization: header } : {}) },
      { status: 401, code: 'invalid_api_key' },
    ),
  );
}

for (const method of ['GET', 'PUT', 'DELETE', 'PATCH']) {
  add(`REST method ${method}`, () =>
    rest(method === 'GET' ? undefined : '{}', JSON_HEADERS, { status: 405, code: 'method_not_allowed' }, method),
  );
}
for (const path of ['/v1/images', '/v1/images/variations', '/v2/images/generations', '/../etc/passwd', '/images/']) {
  add(`REST path ${path}`, () => rest(undefined, AUTH, { status: 404, code: 'not_found' }, 'GET', path));
}
// The edits route exists (multipart or JSON POST): other methods are refused, not unknown.
add('REST GET /v1/images/edits', () =>
  rest(undefined, AUTH, { status: 405, code: 'method_not_allowed' }, 'GET', '/v1/images/edits'),
);
add('REST image name with a malformed escape', () =>
  rest(undefined, AUTH, { status: 400, code: 'invalid_path' }, 'GET', '/images/%E0%A4%A'),
);
add('REST body over the limit', () =>
  rest(JSON.stringify({ ...BASE, prompt: 'x'.repeat(16 * 1024 * 1024) }), JSON_HEADERS, {
    status: 413,
    code: 'body_too_large',
  }),
);

/** Bad values per body field: [field, values, expected param, expected status]. */
const FIELD_TABLE: [string, unknown[], string, number?][] = [
  ['prompt', ['', '   ', 123, true, [], {}, 'x'.repeat(10_001)], 'prompt'],
  ['width', [0, 15, 17, 48, 1296, 2048, -16, 64.5, '64', true, []], 'width'],
  ['height', [0, 15, 63, 1296, -64, 64.5, '64', false], 'height'],
  ['num_inference_steps', [0, -1, 1.5, 101, 1000, '4', true, {}], 'num_inference_steps'],
  ['guidance_scale', [-1, 31, 1e9, 'x', true, []], 'guidance_scale'],
  ['seed', [-1, 1.5, 'x', 2 ** 40, true], 'seed'],
  ['n', [0, -1, 100, 1.5, 'x'], 'n'],
  ['size', ['big', '64', '64x', 'x64', '64x64x64', 12, '65x64', '0x0', '64X64'], 'size'],
  ['response_format', ['file', 1, '', 'URL'], 'response_format'],
  ['output_format', ['gif', 'bmp', 1, ''], 'output_format'],
  ['output_compression', [0, 101, -5, 'x', 1.5], 'output_compression'],
  ['model', ['nope', 'flux-1-dev-original-bs99', 'flux-2'], 'model', 404],
  [
    'loras',
    ['x', 1, {}, [1], [{}], [{ name: '' }], [{ name: 'x', strength: 11 }], [{ name: 'x', strength: 'x' }]],
    'loras',
  ],
];
for (const [field, values, param, status] of FIELD_TABLE) {
  for (const value of values) {
    for (const [dialect, headers] of Object.entries(DIALECTS)) {
      const body: Record<string, unknown> = { ...BASE, [field]: value };
      // Size replaces width/height; aspect ratio cases must not carry them.
      if (field === 'size') {
        delete body.width;
        delete body.height;
      }
      add(`REST ${dialect} ${field}=${JSON.stringify(value).slice(0, 40)}`, () =>
        rest(JSON.stringify(body), headers, {
          status: status ?? 400,
          ...(status === 404 ? { code: 'model_not_found' } : {}),
          param,
        }),
      );
    }
  }
}
for (const ratio of ['1:3', 'wide', 1, '', '16/9']) {
  add(`REST aspect_ratio=${JSON.stringify(ratio)}`, () =>
    rest(JSON.stringify({ prompt: 'x', aspect_ratio: ratio, num_inference_steps: 1 }), JSON_HEADERS, {
      status: 400,
      param: 'aspect_ratio',
    }),
  );
}
add('REST aspect_ratio and width/height together', () =>
  rest(JSON.stringify({ ...BASE, aspect_ratio: '1:1' }), JSON_HEADERS, { status: 400, param: 'aspect_ratio' }),
);
add('REST width without height', () =>
  rest(JSON.stringify({ prompt: 'x', width: 64, num_inference_steps: 1 }), JSON_HEADERS, {
    status: 400,
    param: 'height',
  }),
);
add('REST missing prompt', () =>
  rest(JSON.stringify({ width: 64, height: 64 }), JSON_HEADERS, { status: 400, param: 'prompt' }),
);

// ------------------------------------------------------------------------------------------------------- GraphQL

interface GqlResult {
  status: number;
  body: { data?: Record<string, unknown> | null; errors?: { message: string; extensions?: { code?: string } }[] };
}

/** A top-level field of a GraphQL reply's data (undefined when absent). */
function pick(r: GqlResult, key: string): unknown {
  return r.body.data ? r.body.data[key] : undefined;
}

async function gqlRaw(payload: unknown, headers: Record<string, string> = JSON_HEADERS): Promise<GqlResult> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers,
    body: typeof payload === 'string' ? payload : JSON.stringify(payload),
  });
  const text = await res.text();
  return { status: res.status, body: JSON.parse(text) as GqlResult['body'] };
}

const GENERATE = `mutation ($input: GenerateImageInput!) { generateImage(input: $input) {
  __typename ... on Error { code message } ... on ValidationError { field } ... on LoraError { lora } } }`;

/** A typed error as data: `__typename` and, for validation errors, the field. */
async function gqlTyped(input: Record<string, unknown>, typename: string, field?: string, code?: string | string[]) {
  const { status, body } = await gqlRaw({ query: GENERATE, variables: { input } });
  const where = `${JSON.stringify(input).slice(0, 160)} -> ${status} ${JSON.stringify(body).slice(0, 300)}`;
  expect(status, where).toBe(200);
  const r = body.data?.generateImage as { __typename: string; field?: string; code?: string } | undefined;
  expect(r?.__typename, where).toBe(typename);
  if (field) expect(r?.field, where).toBe(field);
  if (Array.isArray(code)) expect(code, where).toContain(r?.code);
  else if (code) expect(r?.code, where).toBe(code);
  else expect(r?.code, where).toMatch(/^[a-z_]+$/);
}

/** A refused GraphQL request (limits): status and `extensions.code`, nothing executed. */
async function gqlRefused(payload: unknown, status: number, code: string, headers?: Record<string, string>) {
  const r = await gqlRaw(payload, headers);
  const where = `${JSON.stringify(payload).slice(0, 160)} -> ${r.status} ${JSON.stringify(r.body).slice(0, 300)}`;
  expect(r.status, where).toBe(status);
  expect(r.body.errors?.[0]?.extensions?.code, where).toBe(code);
  expect(r.body.data?.generateImage ?? null, where).toBeNull();
}

/** A variable of the wrong type: 400 and graphql-js's coercion error naming the input path; nothing executed. */
async function gqlBadVariable(input: Record<string, unknown>, path: string) {
  const r = await gqlRaw({ query: GENERATE, variables: { input } });
  const where = `${JSON.stringify(input).slice(0, 160)} -> ${r.status} ${JSON.stringify(r.body).slice(0, 300)}`;
  expect(r.status, where).toBe(400);
  expect(r.body.errors?.[0]?.message, where).toMatch(/^Variable "\$input" got invalid value/);
  expect(r.body.errors?.[0]?.message, where).toContain(path);
  expect(r.body.data ?? null, where).toBeNull();
}

const GQL_BASE = { prompt: 'a fox', width: 64, height: 64, steps: 1 };
/** Values of the right type but out of range: ValidationError on the field. */
const GQL_RANGE: [string, unknown[]][] = [
  ['prompt', ['', '   ', 'x'.repeat(10_001)]],
  ['width', [0, 15, 17, 1296, -16, 2048]],
  ['height', [0, 63, 1296, -64]],
  ['steps', [0, -1, 101, 1000]],
  ['guidanceScale', [-1, 31, 1e9]],
  ['seed', [-1]],
  ['numImages', [0, -1, 100]],
  ['quality', [0, 101, -5]],
  ['aspectRatio', ['1:3', 'wide', '']],
  ['controlImage', ['']],
];
for (const [field, values] of GQL_RANGE) {
  for (const value of values) {
    const input: Record<string, unknown> = { ...GQL_BASE, [field]: value };
    if (field === 'aspectRatio') {
      delete input.width;
      delete input.height;
    }
    add(`GraphQL ${field}=${JSON.stringify(value).slice(0, 40)}`, () => gqlTyped(input, 'ValidationError', field));
  }
}
/** Values of the wrong type: a coded GraphQL error from variable coercion. */
const GQL_TYPES: [string, unknown[]][] = [
  ['prompt', [1, true, [], {}, null]],
  ['width', ['64', 64.5, true, 2 ** 40]],
  ['steps', ['4', 1.5, {}]],
  ['guidanceScale', ['x', true]],
  ['seed', ['x', 1.5]],
  ['outputFormat', ['GIF', 'png', 1]],
  ['preview', ['yes', 1]],
  ['loras', ['x', [1], [{}], [{ name: 1 }], [{ name: 'x', strength: 'x' }]]],
  ['unknownField', [1]],
];
for (const [field, values] of GQL_TYPES) {
  for (const value of values) {
    add(`GraphQL wrong type ${field}=${JSON.stringify(value)}`, () =>
      gqlBadVariable({ ...GQL_BASE, [field]: value }, field === 'unknownField' ? field : `input.${field}`),
    );
  }
}
add('GraphQL width without height', () => gqlTyped({ prompt: 'x', width: 64 }, 'ValidationError', 'height'));
add('GraphQL model and mode together', () =>
  gqlTyped({ ...GQL_BASE, model: 'flux-1-dev', mode: 'original' }, 'ValidationError', 'mode'),
);
for (const model of ['nope', 'flux-1-dev-original-bs99', 'flux-2-pro']) {
  add(`GraphQL model ${model}`, () =>
    gqlTyped({ ...GQL_BASE, model }, 'UnknownModelError', undefined, 'model_not_found'),
  );
}
for (const mode of ['XXL', 'tiny', 'original2']) {
  add(`GraphQL mode ${mode}`, () => gqlTyped({ ...GQL_BASE, mode }, 'UnknownModelError', undefined, 'model_not_found'));
}
add('GraphQL numImages over the batch size', () =>
  gqlTyped({ ...GQL_BASE, numImages: 3 }, 'ValidationError', 'numImages'),
);
add('GraphQL nine LoRAs', () =>
  gqlTyped(
    { ...GQL_BASE, loras: Array.from({ length: 9 }, (_, i) => ({ name: `l${i}` })) },
    'ValidationError',
    'loras',
  ),
);
add('GraphQL a LoRA named twice', () =>
  gqlTyped({ ...GQL_BASE, loras: [{ name: 'a' }, { name: 'a.safetensors' }] }, 'ValidationError', 'loras'),
);

const SYNTAX = [
  '{',
  '}',
  'query {',
  'mutation { generateImage }',
  '{ models { id }',
  'subscription',
  '{ "x" }',
  '{ models(first: ) { id } }',
  '{ ...on }',
  'fragment F on Query { models { id } }',
  '#only a comment',
  '{ models { id } } }',
];
for (const query of SYNTAX) {
  add(`GraphQL malformed document ${JSON.stringify(query)}`, async () => {
    const r = await gqlRaw({ query });
    const where = `${query} -> ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`;
    expect([400, 200], where).toContain(r.status);
    expect(r.body.errors?.length, where).toBeGreaterThan(0);
    expect(r.body.errors?.[0]?.message, where).toMatch(/\S/);
  });
}
for (const [label, payload] of [
  ['no query', {}],
  ['query not a string', { query: 1 }],
  ['variables not an object', { query: '{ models { id } }', variables: 'x' }],
  ['not JSON', '{query'],
  ['an array', '[1]'],
] as const) {
  add(`GraphQL request ${label}`, async () => {
    const r = await gqlRaw(payload);
    const where = `${r.status} ${JSON.stringify(r.body)}`;
    // yoga answers request-shape errors per GraphQL over HTTP: 400, or 200 for `application/json` replies.
    expect([200, 400], where).toContain(r.status);
    expect(r.body.errors?.[0]?.extensions?.code, where).toBe('BAD_REQUEST');
    expect(r.body.data ?? null, where).toBeNull();
  });
}
const LIMITS: [string, string, string][] = [
  [
    '1000 aliases',
    `mutation { ${Array.from({ length: 1000 }, (_, i) => `a${i}: generateImage(input: {prompt: "x"}) { __typename }`).join(' ')} }`,
    'MAX_TOKENS',
  ],
  ['5000 deep', `${'{ a '.repeat(5000)}${'}'.repeat(5000)}`, 'MAX_TOKENS'],
  ['20 aliases', `{ ${Array.from({ length: 20 }, (_, i) => `m${i}: models { id }`).join(' ')} }`, 'MAX_ALIASES'],
  ['13 deep', `{ ${'a { '.repeat(13)}b${' }'.repeat(13)} }`, 'MAX_DEPTH'],
  [
    '5 generations',
    `mutation { ${Array.from({ length: 5 }, (_, i) => `g${i}: generateImage(input: {prompt: "x"}) { __typename }`).join(' ')} }`,
    'TOO_MANY_GENERATIONS',
  ],
  ['60 directives', `{ models ${'@include(if: true) '.repeat(60)}{ id } }`, 'MAX_DIRECTIVES'],
];
for (const [label, query, code] of LIMITS) {
  add(`GraphQL limit ${label}`, () => gqlRefused({ query }, 400, code));
}
for (const id of ['nope', '', 'x'.repeat(500), 'SW1hZ2VKb2I6bm9wZQ==', '../../etc/passwd']) {
  add(`GraphQL job(${id.slice(0, 20)})`, async () => {
    const r = await gqlRaw({ query: 'query ($id: ID!) { job(id: $id) { __typename } }', variables: { id } });
    expect((pick(r, 'job') as { __typename: string }).__typename).toBe('NotFoundError');
  });
  add(`GraphQL cancelJob(${id.slice(0, 20)})`, async () => {
    const r = await gqlRaw({ query: 'mutation ($id: ID!) { cancelJob(id: $id) { __typename } }', variables: { id } });
    expect((pick(r, 'cancelJob') as { __typename: string }).__typename).toBe('NotFoundError');
  });
}
add('GraphQL without a key', () =>
  rest(
    JSON.stringify({ query: '{ models { id } }' }),
    { 'content-type': 'application/json' },
    { status: 401 },
    'POST',
    '/graphql',
  ),
);

// --------------------------------------------------------------------------------------------------------- LoRAs

/** Broken LoRA files written into LORA_DIR in beforeAll: [file name, expected code]. */
const BAD_LORA_FILES: [string, string | string[]][] = [
  ['truncated', 'invalid_file'],
  ['garbage', 'invalid_file'],
  ['empty', 'invalid_file'],
  ['huge_header', 'invalid_file'],
  ['bad_json_header', 'invalid_file'],
  ['bad_shapes', 'shape_mismatch'],
  ['unmatched', 'unmatched_keys'],
  ['non_finite', 'non_finite'],
];
const BAD_LORA_NAMES: [string, string | string[]][] = [
  ['../outside', 'forbidden_path'],
  ['/etc/passwd', 'forbidden_path'],
  ['sub/../../x', 'forbidden_path'],
  ['missing', 'not_found'],
  ['missing.safetensors', 'not_found'],
];
for (const [name, code] of [...BAD_LORA_FILES, ...BAD_LORA_NAMES]) {
  add(`LoRA ${name} over REST`, () =>
    rest(JSON.stringify({ ...BASE, loras: [{ name }] }), JSON_HEADERS, { status: 400, code, param: 'loras' }),
  );
  add(`LoRA ${name} over GraphQL generateImage`, () =>
    gqlTyped({ ...GQL_BASE, loras: [{ name }] }, 'LoraError', undefined, code),
  );
  add(`LoRA ${name} over GraphQL loadLora`, async () => {
    const r = await gqlRaw({
      query: 'mutation ($n: String!) { loadLora(name: $n) { __typename ... on Error { code } } }',
      variables: { n: name },
    });
    const out = r.body.data?.loadLora as { __typename: string; code: string };
    expect(out.__typename, JSON.stringify(r.body)).toBe('LoraError');
    if (Array.isArray(code)) expect(code).toContain(out.code);
    else expect(out.code).toBe(code);
  });
}
for (const [label, name, strength] of [
  ['strength 11', 'canny', 11],
  ['strength -11', 'canny', -11],
  ['empty name', '', 1],
] as const) {
  add(`LoRA loadLora ${label}`, async () => {
    const r = await gqlRaw({
      query: 'mutation ($n: String!, $s: Float) { loadLora(name: $n, strength: $s) { __typename } }',
      variables: { n: name, s: strength },
    });
    expect((pick(r, 'loadLora') as { __typename: string }).__typename).toBe('ValidationError');
  });
}

// -------------------------------------------------------------------------------------------------- Control images

const CONTROL_CASES: [string, string, string][] = [
  ['not base64', '!!!not base64!!!', 'invalid_input'],
  ['base64 of text', Buffer.from('hello, not an image').toString('base64'), 'invalid_image'],
  ['data URL not base64', 'data:image/png,rawbytes', 'invalid_input'],
  ['data URL of garbage', `data:image/png;base64,${Buffer.from('garbage').toString('base64')}`, 'invalid_image'],
  ['file URL', 'file:///etc/passwd', 'unsupported_url'],
  ['ftp URL', 'ftp://example.com/x.png', 'unsupported_url'],
  ['javascript URL', 'javascript:alert(1)', 'unsupported_url'],
  ['loopback URL', 'http://127.0.0.1:1/x.png', 'forbidden_url'],
  ['private URL', 'http://10.1.2.3/x.png', 'forbidden_url'],
  ['metadata URL', 'http://169.254.169.254/latest/meta-data', 'forbidden_url'],
  ['IPv6 loopback', 'http://[::1]/x.png', 'forbidden_url'],
  ['localhost name', 'http://localhost/x.png', 'forbidden_url'],
  ['malformed URL', 'http://', 'invalid_input'],
];
for (const [label, image, code] of CONTROL_CASES) {
  add(`control image ${label} over REST`, () =>
    rest(JSON.stringify({ ...BASE, loras: [{ name: 'canny' }], control_image: image }), JSON_HEADERS, {
      status: 400,
      code,
      param: 'control_image',
    }),
  );
  add(`control image ${label} over GraphQL`, () =>
    gqlTyped({ ...GQL_BASE, loras: [{ name: 'canny' }], controlImage: image }, 'ValidationError', 'controlImage', code),
  );
}
add('control image missing', () =>
  gqlTyped({ ...GQL_BASE, loras: [{ name: 'canny' }] }, 'ValidationError', 'controlImage', 'missing'),
);
add('control image without a control LoRA', () =>
  gqlTyped(
    { ...GQL_BASE, loras: [], controlImage: 'data:image/png;base64,AAAA' },
    'ValidationError',
    'controlImage',
    'unexpected',
  ),
);

// ----------------------------------------------------------------------------------------------------- WebSocket

interface WsOutcome {
  close?: number;
  status?: number;
  messages: { type: string; payload?: unknown }[];
}

/** Opens a graphql-ws socket, sends `frames` (after `connection_ack` where `init`), collects until close or 1.5 s. */
function ws(
  frames: (string | Buffer)[],
  options: { init?: boolean; headers?: Record<string, string>; query?: string } = {},
) {
  return new Promise<WsOutcome>((resolve) => {
    const socket = new WebSocket(`${url.replace('http', 'ws')}/graphql${options.query ?? ''}`, 'graphql-transport-ws', {
      headers: options.headers ?? AUTH,
    });
    const out: WsOutcome = { messages: [] };
    const timer = setTimeout(() => {
      socket.close();
      resolve(out);
    }, 1500);
    const finish = () => {
      clearTimeout(timer);
      resolve(out);
    };
    socket.on('error', () => {});
    socket.on('unexpected-response', (_req, res) => {
      out.status = res.statusCode;
      res.resume();
      finish();
    });
    socket.on('close', (code) => {
      out.close = code;
      finish();
    });
    socket.on('message', (m) => {
      const msg = JSON.parse(String(m)) as { type: string };
      out.messages.push(msg);
      if (msg.type === 'connection_ack') for (const f of frames) socket.send(f);
    });
    socket.on('open', () => {
      if (options.init === false) for (const f of frames) socket.send(f);
      else socket.send(JSON.stringify({ type: 'connection_init' }));
    });
  });
}

const WS_CLOSE_CASES: [string, (string | Buffer)[], number, { init?: boolean; headers?: Record<string, string> }?][] = [
  ['invalid JSON', ['{not json'], 4400],
  ['unknown message type', [JSON.stringify({ type: 'bogus' })], 4400],
  ['a number', ['42'], 4400],
  ['subscribe without id', [JSON.stringify({ type: 'subscribe', payload: { query: '{ models { id } }' } })], 4400],
  ['subscribe without payload', [JSON.stringify({ type: 'subscribe', id: '1' })], 4400],
  ['second connection_init', [JSON.stringify({ type: 'connection_init' })], 4429],
  [
    'subscribe before init',
    [JSON.stringify({ type: 'subscribe', id: '1', payload: { query: '{ models { id } }' } })],
    4401,
    { init: false },
  ],
  ['frame over WS_MAX_PAYLOAD', [Buffer.alloc(200 * 1024, 'x')], 1009],
  [
    'init over WS_MAX_PAYLOAD',
    [JSON.stringify({ type: 'connection_init', payload: { a: 'x'.repeat(200 * 1024) } })],
    1009,
    { init: false, headers: {} },
  ],
  [
    'wrong key in connection_init',
    [JSON.stringify({ type: 'connection_init', payload: { authorization: 'Bearer nope' } })],
    4403,
    { init: false, headers: {} },
  ],
  [
    'no key in connection_init',
    [JSON.stringify({ type: 'connection_init', payload: {} })],
    4403,
    { init: false, headers: {} },
  ],
];
for (const [label, frames, code, options] of WS_CLOSE_CASES) {
  add(`WebSocket ${label}`, async () => {
    const out = await ws(frames, options ?? {});
    expect(out.close, JSON.stringify(out)).toBe(code);
  });
}
add('WebSocket wrong key on the upgrade', async () => {
  const out = await ws([], { headers: { authorization: 'Bearer nope' } });
  expect(out.status).toBe(401);
});
add('WebSocket wrong token query on the upgrade', async () => {
  const out = await ws([], { headers: {}, query: '?token=nope' });
  expect(out.status).toBe(401);
});
const WS_ERROR_CASES: [string, string, string | undefined][] = [
  ['syntax error', '{', undefined],
  ['unknown field', '{ nope }', undefined],
  [
    'too many generations',
    `mutation { ${Array.from({ length: 5 }, (_, i) => `g${i}: generateImage(input: {prompt: "x"}) { __typename }`).join(' ')} }`,
    'TOO_MANY_GENERATIONS',
  ],
  ['too deep', `{ ${'a { '.repeat(13)}b${' }'.repeat(13)} }`, 'MAX_DEPTH'],
  ['too many aliases', `{ ${Array.from({ length: 20 }, (_, i) => `m${i}: models { id }`).join(' ')} }`, 'MAX_ALIASES'],
];
for (const [label, query, code] of WS_ERROR_CASES) {
  add(`WebSocket subscribe ${label}`, async () => {
    const out = await ws([JSON.stringify({ type: 'subscribe', id: '1', payload: { query } })]);
    const err = out.messages.find((m) => m.type === 'error') as
      | { payload: { extensions?: { code?: string } }[] }
      | undefined;
    expect(err, JSON.stringify(out)).toBeDefined();
    if (code) expect(err?.payload[0]?.extensions?.code).toBe(code);
  });
}
add('WebSocket generateImage with a bad input is data', async () => {
  const out = await ws([
    JSON.stringify({
      type: 'subscribe',
      id: '1',
      payload: { query: 'mutation { generateImage(input: {prompt: "x", width: 15, height: 64}) { __typename } }' },
    }),
  ]);
  const next = out.messages.find((m) => m.type === 'next') as {
    payload: { data: { generateImage: { __typename: string } } };
  };
  expect(next.payload.data.generateImage.__typename).toBe('ValidationError');
});
add('WebSocket jobProgress of an unknown job', async () => {
  const out = await ws([
    JSON.stringify({
      type: 'subscribe',
      id: '1',
      payload: { query: 'subscription { jobProgress(id: "nope") { __typename } }' },
    }),
  ]);
  const next = out.messages.find((m) => m.type === 'next') as {
    payload: { data: { jobProgress: { __typename: string } } };
  };
  expect(next.payload.data.jobProgress.__typename).toBe('NotFoundError');
});

// ----------------------------------------------------------------------------------------------------------- run

beforeAll(async () => {
  loraDir = tempDir();
  writeSafetensors(
    join(loraDir, 'canny.safetensors'),
    makeBflControlLora(TINY_CONFIG, { rank: 4, seed: 5, imgInChannels: 128 }),
  );
  const good = writeLora(loraDir, 'good.safetensors', {
    'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': t([4, D], 1),
    'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': t([D, 4], 2),
  });
  const { readFileSync } = await import('node:fs');
  writeFileSync(join(loraDir, 'truncated.safetensors'), readFileSync(good).subarray(0, 40));
  writeFileSync(join(loraDir, 'garbage.safetensors'), Buffer.from('this is not a safetensors file at all'));
  writeFileSync(join(loraDir, 'empty.safetensors'), Buffer.alloc(0));
  const huge = Buffer.alloc(16);
  huge.writeBigUInt64LE(2n ** 50n);
  writeFileSync(join(loraDir, 'huge_header.safetensors'), huge);
  const header = Buffer.from('{"a": not json}');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(join(loraDir, 'bad_json_header.safetensors'), Buffer.concat([len, header]));
  writeLora(loraDir, 'bad_shapes.safetensors', {
    'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': t([4, D + 1], 1),
    'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': t([D, 4], 2),
  });
  writeLora(loraDir, 'unmatched.safetensors', { 'something.else.lora_A.weight': t([4, D], 1) });
  const nan = t([4, D], 1);
  (nan.data as Float32Array)[3] = Number.NaN;
  writeLora(loraDir, 'non_finite.safetensors', {
    'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': nan,
    'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': t([D, 4], 2),
  });
  ({ url } = await startTestServer({
    apiKeys: [{ key: KEY, name: 'corpus', admin: false }],
    loraDir,
    modelBatch: 2,
    wsMaxPayload: 64 * 1024,
  }));
});
afterAll(disposeLeftovers);

describe('bad-input corpus', () => {
  it(`has at least 300 cases (${cases.length})`, () => {
    expect(cases.length).toBeGreaterThanOrEqual(300);
  });

  it('answers every case with a typed error, stays up, and loses no accepted job', async () => {
    // Jobs accepted alongside the corpus: one over REST (waiting for its image), two over GraphQL.
    const restJob = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { ...JSON_HEADERS, accept: 'application/json' },
      body: JSON.stringify({ prompt: 'a good fox', size: '64x64', num_inference_steps: 4 }),
    });
    const accepted: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await gqlRaw({
        query:
          'mutation { generateImage(input: {prompt: "a good owl", width: 64, height: 64, steps: 4}) { ... on MutationGenerateImageSuccess { data { jobId } } } }',
      });
      accepted.push(String((pick(r, 'generateImage') as { data: { jobId: string } }).data.jobId));
    }

    const failures: string[] = [];
    const queue = [...cases];
    const worker = async () => {
      for (let c = queue.shift(); c; c = queue.shift()) {
        try {
          await c.run();
        } catch (err) {
          failures.push(`${c.name}: ${(err as Error).message.slice(0, 400)}`);
        }
      }
    };
    let healthChecks = 0;
    const health = setInterval(() => {
      fetch(`${url}/healthz`).then(
        (r) => {
          if (r.status === 200) healthChecks++;
        },
        () => {},
      );
    }, 200);
    await Promise.all(Array.from({ length: 6 }, worker));
    clearInterval(health);
    expect(failures, failures.join('\n')).toEqual([]);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(healthChecks).toBeGreaterThan(0);

    const rest = await restJob;
    expect(rest.status).toBe(200);
    expect(((await rest.json()) as { data: unknown[] }).data).toHaveLength(1);
    for (const id of accepted) {
      await eventually(async () => {
        const r = await gqlRaw({ query: `{ job(id: "${id}") { ... on QueryJobSuccess { data { status } } } }` });
        expect((pick(r, 'job') as { data: { status: string } }).data.status).toBe('SUCCEEDED');
      });
    }
    // Nothing from the corpus was queued: only the three good jobs exist.
    const jobs = await gqlRaw({ query: '{ jobs(first: 100) { edges { node { prompt } } } }' });
    const prompts = (pick(jobs, 'jobs') as { edges: { node: { prompt: string } }[] }).edges.map((e) => e.node.prompt);
    expect(prompts.sort()).toEqual(['a good fox', 'a good owl', 'a good owl']);
  });
});
