/**
 * @file Server configuration from the environment, TheStage container style (MODEL_REPO, MODEL_SIZE,
 * MODEL_BATCH, AUTH_TOKEN, PORT, HOST) plus our own knobs. Bad values fail at startup with the variable named.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { LOG_LEVELS, type LogLevel } from './log.ts';
import { defaultHubCacheDir, type HubOptions, isHubModelSpec } from './shared/hub/index.ts';
import { PACKAGE_ROOT } from './shared/package-root.ts';
import { EXECUTION_PROVIDERS, type ExecutionProvider, MODE_SIZES } from './shared/vocabulary/index.ts';

/** Everything `startServer` needs. */
export interface ServerConfig {
  /**
   * Model: a folder (diffusers or BFL layout) or transformer file, as an absolute path, or a Hugging Face id
   * `org/name[@revision]` (kept as given; `resolveModelPath` turns it into the cache snapshot). MODEL_REPO.
   * @default {@link EMBEDDED_MODEL_DIR} (flux-mini when installed, else flux-tiny)
   */
  modelRepo: string;
  /** The Hugging Face cache and hub (HF_HUB_CACHE, HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE). */
  hub: HubOptions;
  /** Default mode as its size token: `original`, `xl`, `l`, `m`, `s`. MODEL_SIZE. @default 'original' */
  modelSize: string;
  /** Samples per engine batch; 1 turns batching off. MODEL_BATCH. @default 4 */
  modelBatch: number;
  /** When set, requests need `Authorization: Bearer <token>`. AUTH_TOKEN. */
  authToken?: string;
  /** Refuse to serve HTTP without AUTH_TOKEN (the Docker images set it). AUTH_REQUIRED. @default false */
  authRequired: boolean;
  /** 0 picks a free port. PORT. @default 8000 */
  port: number;
  /** HOST. @default '0.0.0.0' */
  host: string;
  /** Where images are written. IMAGE_DIR. @default `<cwd>/.cache/images` */
  imageDir: string;
  /** Longest wait of the oldest job for batch companions. MAX_QUEUE_DELAY_MS. @default 20 */
  maxQueueDelayMs: number;
  /** Queued jobs beyond which requests get QueueFullError / 429. MAX_QUEUE_SIZE. @default 64 */
  maxQueueSize: number;
  /** Images older than this are deleted. IMAGE_MAX_AGE_S. @default 86400 */
  imageMaxAgeSeconds: number;
  /** Above this many bytes the oldest images are deleted. IMAGE_MAX_BYTES. @default 2 GiB */
  imageMaxBytes: number;
  /** Base of absolute image URLs (e.g. behind a proxy). PUBLIC_URL. @default from the request's Host */
  publicUrl?: string;
  /** Execution provider of the pipeline. PROVIDER. @default 'cpu' */
  provider: ExecutionProvider;
  /** Intra-op threads of the pipeline. THREADS. */
  threads?: number;
  /** Compiled-engine cache. CACHE_DIR (alias FLUXQL_CACHE_DIR). @default `<repo>/.cache/engines` */
  cacheDir?: string;
  /** The only directory LoRA files are read from (`loras`, `loadLora`, per-request `loras`). LORA_DIR. */
  loraDir?: string;
  /** Let ONNX Runtime's intra-op threads spin-wait between runs (ORT's default; off here). FLUXQL_ORT_SPIN. */
  ortSpin: boolean;
  /**
   * Modes whose engines are planned, compiled and loaded in the background from startup, besides the default mode
   * (always warmed first; `/readyz` waits for it): `all`, or a comma list such as `xl,s` (`default`: none other).
   * A mode not warmed yet is warmed when its first request arrives; that request waits, other modes keep serving.
   * WARM_MODES. @default 'all'
   */
  warmModes: 'all' | string[];
  /** Scale-out roles (`api`, `worker`) only: the shared Redis. REDIS_URL. */
  redisUrl?: string;
  /** Prefix of every Redis key, channel and queue of this deployment. REDIS_PREFIX. @default 'fluxql' */
  redisPrefix: string;
  /** Times a job is started again after the worker running it was lost. JOB_RETRIES. @default 1 */
  jobRetries: number;
  /** BullMQ lock duration: a lost worker's job is retried after about this long. WORKER_LOCK_MS. @default 30000 */
  workerLockMs: number;
  /** Name of a worker in adverts and BullMQ. WORKER_ID. @default `<hostname>-<pid>` */
  workerId?: string;
  /** Seconds job records stay readable in Redis. JOB_HISTORY_S. @default 86400 */
  jobHistorySeconds: number;
  /** `onnx` (ONNX Runtime worker) or `cuda` (the native engine, engines/cuda). ENGINE or `--engine`. @default 'onnx' */
  engine: 'onnx' | 'cuda';
  /** The native engine's executable (engine `cuda`). CUDA_ENGINE_BIN. @default `engines/cuda/build/fluxql-engine` */
  cudaEngineBin: string;
  /** Precision the native engine loads the model in. CUDA_PRECISION. @default 'bf16' */
  cudaPrecision: 'f32' | 'bf16' | 'fp8';
  /** The native engine's benchmark, shown by `models`. CUDA_BENCH_RESULTS. @default `bench/results/cuda-h100.json` */
  cudaBenchResults: string;
  /** GPU memory the native engine may hold for LoRA adapters, MiB. CUDA_LORA_MAX_MB. @default 4096 */
  cudaLoraMaxMb: number;
  /**
   * Step-caching threshold of the native engine (relative L1 change of the first block's residual below which a step
   * reuses the cached tail residual) for the jobs of modes without their own (the planned L, M and S calibrate theirs
   * per model: `cuda-step-cache.ts`); absent: off. CUDA_STEP_CACHE.
   */
  cudaStepCache?: number;
  /**
   * The native engine's per-layer planner also measures and routes fp8row (fp8 with per-token activation and
   * per-channel weight scales) next to fp8, each layer choosing bf16, fp8 or fp8row (`cuda-planner.ts`). Off until
   * fp8row is verified on a GPU (engines/cuda/NOTES.md sessions 15e, 15f). CUDA_PLANNER_FP8ROW (`1`/`true`).
   * @default false
   */
  cudaPlannerFp8row: boolean;
  /**
   * The mode benchmark's results (latency, PSNR/SSIM vs original, planner summary per mode), shown by `models`
   * for the served model. A missing or malformed file shows none. MODES_RESULTS. @default `bench/results/modes.json`
   */
  modesResults: string;
  /**
   * Fetch `controlImage` URLs whose host is or resolves to a loopback, private, link-local, CGNAT or unique-local
   * address. Off, such URLs are refused (SSRF guard). CONTROL_IMAGE_ALLOW_PRIVATE_URLS (`1`/`true`). @default false
   */
  controlImageAllowPrivateUrls: boolean;
  /** Minimum level of the JSON log lines on stdout. LOG_LEVEL. @default 'info' */
  logLevel: LogLevel;
  /** Human-readable log lines (pino-pretty) instead of JSON. LOG_PRETTY (`1`/`true`). @default false */
  logPretty: boolean;
  /** HMAC-SHA256 key signing queue-API webhooks; without it `webhook_url` is refused. WEBHOOK_SECRET. */
  webhookSecret?: string;
  /** Call webhook URLs on loopback/private/link-local/... hosts too (SSRF guard off). WEBHOOK_ALLOW_PRIVATE_URLS. @default false */
  webhookAllowPrivateUrls: boolean;
  /** Webhook attempts in all (first included). WEBHOOK_MAX_ATTEMPTS. @default 5 */
  webhookMaxAttempts: number;
  /** Delay before the second webhook attempt, doubling after each. WEBHOOK_RETRY_BASE_MS. @default 1000 */
  webhookRetryBaseMs: number;
  /**
   * First delay before a crashed ONNX engine process is started again; doubled for each process in a row that dies
   * young or fails to start, up to 30 s. ENGINE_RESTART_MS. @default 200
   */
  engineRestartMs: number;
  /**
   * API keys (key -> name, optional role `admin`), from API_KEYS (JSON) and API_KEYS_FILE (a JSON file of the same
   * shape): `{"<key>": "alice"}` or `{"<key>": {"name": "ops", "role": "admin"}}`. Each job belongs to the key's
   * name; only that name (and admins) see it. AUTH_TOKEN is an admin key. @default none
   */
  apiKeys: ApiKey[];
  /** When set, `/metrics` needs `Authorization: Bearer <token>`. METRICS_TOKEN. */
  metricsToken?: string;
  /** Origins allowed by CORS (exact `scheme://host[:port]`); unset: any origin, never with credentials. CORS_ORIGINS. */
  corsOrigins?: string[];
  /** Largest WebSocket message in bytes (`connection_init` included). WS_MAX_PAYLOAD. @default 65536 */
  wsMaxPayload: number;
  /** GraphQL limits (graphql-armor): depth, aliases, tokens, cost, directives. GRAPHQL_MAX_*. */
  graphqlLimits: GraphqlLimits;
  /** Most `generateImage` fields in one GraphQL operation. MAX_GENERATIONS_PER_OPERATION. @default 4 */
  maxGenerationsPerOperation: number;
  /** Time to receive a whole request (headers and body), seconds. HTTP_REQUEST_TIMEOUT_S. @default 60 */
  httpRequestTimeoutSeconds: number;
  /** Time to receive the request headers, seconds. HTTP_HEADERS_TIMEOUT_S. @default 20 */
  httpHeadersTimeoutSeconds: number;
  /** A job not finished this long after submission fails with code `timeout`. JOB_TIMEOUT_S. @default none */
  jobTimeoutSeconds?: number;
  /** On SIGTERM, how long running and queued jobs may take before they are cancelled. SHUTDOWN_GRACE_S. @default 30 */
  shutdownGraceSeconds: number;
}

/** One API key. */
export interface ApiKey {
  key: string;
  /** Owner name of the jobs made with it. */
  name: string;
  /** Admins see and cancel every job. */
  admin: boolean;
}

/** GraphQL document limits; a document over any of them is refused before execution (HTTP 400). */
export interface GraphqlLimits {
  /** GRAPHQL_MAX_DEPTH. @default 12 */
  maxDepth: number;
  /** GRAPHQL_MAX_ALIASES. @default 15 */
  maxAliases: number;
  /** Lexical tokens, checked while parsing. GRAPHQL_MAX_TOKENS. @default 2000 */
  maxTokens: number;
  /** graphql-armor's cost (objects 2, scalars 1, times depth). GRAPHQL_MAX_COST. @default 5000 */
  maxCost: number;
  /** GRAPHQL_MAX_DIRECTIVES. @default 50 */
  maxDirectives: number;
}

/** An environment variable with a bad value. */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

const REPO_ROOT = PACKAGE_ROOT;

/** flux-tiny: FLUX.1-dev's structure with tiny random weights; the model of the conformance fixtures. */
export const FLUX_TINY_DIR = resolve(REPO_ROOT, 'models/flux-tiny');
/** flux-mini: FLUX.1-dev's structure trained on the caption grammar (issue 14; tools/train-mini). */
export const FLUX_MINI_DIR = resolve(REPO_ROOT, 'models/flux-mini');
/** Whether flux-mini is installed (its weights come from a GPU run; the repository works without them). */
export const HAS_FLUX_MINI = existsSync(join(FLUX_MINI_DIR, 'model_index.json'));
/** The embedded model served by default: flux-mini when installed (it draws what the prompt asks), else flux-tiny. */
export const EMBEDDED_MODEL_DIR = HAS_FLUX_MINI ? FLUX_MINI_DIR : FLUX_TINY_DIR;

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => {
  const error =
    max === Number.MAX_SAFE_INTEGER ? `must be an integer >= ${min}` : `must be an integer from ${min} to ${max}`;
  return z.coerce.number({ error }).int({ error }).min(min, { error }).max(max, { error });
};
const flag = () =>
  z
    .string()
    .transform((s) => s.trim().toLowerCase())
    .pipe(
      z.enum(['1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'], {
        error: 'must be 1/0, true/false, yes/no or on/off',
      }),
    )
    .transform((s) => ['1', 'true', 'yes', 'on'].includes(s));

const ENV_SCHEMA = {
  MODEL_REPO: z.string().min(1).optional(),
  MODEL_SIZE: z
    .string()
    .transform((s) => s.toLowerCase())
    .pipe(z.enum(MODE_SIZES))
    .optional(),
  MODEL_BATCH: int(1, 64).optional(),
  AUTH_TOKEN: z.string().optional(),
  AUTH_REQUIRED: flag().optional(),
  PORT: int(0, 65535).optional(),
  HOST: z.string().min(1).optional(),
  IMAGE_DIR: z.string().min(1).optional(),
  MAX_QUEUE_DELAY_MS: int(0, 60_000).optional(),
  MAX_QUEUE_SIZE: int(1).optional(),
  IMAGE_MAX_AGE_S: int(1).optional(),
  IMAGE_MAX_BYTES: int(1).optional(),
  PUBLIC_URL: z.url().optional(),
  PROVIDER: z.enum(EXECUTION_PROVIDERS).optional(),
  THREADS: int(1, 1024).optional(),
  CACHE_DIR: z.string().min(1).optional(),
  FLUXQL_CACHE_DIR: z.string().min(1).optional(),
  LORA_DIR: z.string().min(1).optional(),
  FLUXQL_ORT_SPIN: flag().optional(),
  WARM_MODES: z
    .string()
    .transform((s) => s.trim().toLowerCase())
    .pipe(
      z.union([
        z.enum(['all', 'default']),
        z
          .string()
          .transform((s) => s.split(',').map((m) => m.trim()))
          .pipe(z.array(z.enum(['original', 'xl', 'l', 'm', 's'], { error: 'modes are original, xl, l, m, s' }))),
      ]),
    )
    .optional(),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
    .optional(),
  REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - only')
    .optional(),
  JOB_RETRIES: int(0, 100).optional(),
  WORKER_LOCK_MS: int(1000, 3_600_000).optional(),
  WORKER_ID: z.string().min(1).max(200).optional(),
  JOB_HISTORY_S: int(60).optional(),
  ENGINE: z.enum(['onnx', 'cuda']).optional(),
  CUDA_ENGINE_BIN: z.string().min(1).optional(),
  CUDA_PRECISION: z.enum(['f32', 'bf16', 'fp8']).optional(),
  CUDA_BENCH_RESULTS: z.string().min(1).optional(),
  CUDA_LORA_MAX_MB: int(0, 1_048_576).optional(),
  CUDA_STEP_CACHE: z.coerce
    .number({ error: 'must be a number >= 0' })
    .min(0, { error: 'must be a number >= 0' })
    .refine(Number.isFinite, { error: 'must be a number >= 0' })
    .optional(),
  CUDA_PLANNER_FP8ROW: flag().optional(),
  MODES_RESULTS: z.string().min(1).optional(),
  CONTROL_IMAGE_ALLOW_PRIVATE_URLS: flag().optional(),
  LOG_LEVEL: z
    .string()
    .transform((s) => s.trim().toLowerCase())
    .pipe(z.enum(LOG_LEVELS))
    .optional(),
  LOG_PRETTY: flag().optional(),
  WEBHOOK_SECRET: z.string().min(16, 'must be at least 16 characters').optional(),
  WEBHOOK_ALLOW_PRIVATE_URLS: flag().optional(),
  WEBHOOK_MAX_ATTEMPTS: int(1, 20).optional(),
  WEBHOOK_RETRY_BASE_MS: int(1, 3_600_000).optional(),
  API_KEYS: z.string().optional(),
  API_KEYS_FILE: z.string().min(1).optional(),
  METRICS_TOKEN: z.string().optional(),
  CORS_ORIGINS: z
    .string()
    .transform((s) =>
      s
        .split(',')
        .map((o) => o.trim().replace(/\/+$/, ''))
        .filter(Boolean),
    )
    .pipe(z.array(z.string().regex(/^https?:\/\/[^/\s]+$/, 'a comma-separated list of http(s)://host[:port] origins'))),
  WS_MAX_PAYLOAD: int(1024, 256 * 1024 * 1024).optional(),
  GRAPHQL_MAX_DEPTH: int(1, 1000).optional(),
  GRAPHQL_MAX_ALIASES: int(0, 10_000).optional(),
  GRAPHQL_MAX_TOKENS: int(10, 1_000_000).optional(),
  GRAPHQL_MAX_COST: int(1, 100_000_000).optional(),
  GRAPHQL_MAX_DIRECTIVES: int(0, 10_000).optional(),
  MAX_GENERATIONS_PER_OPERATION: int(1, 1000).optional(),
  HTTP_REQUEST_TIMEOUT_S: int(1, 3600).optional(),
  HTTP_HEADERS_TIMEOUT_S: int(1, 3600).optional(),
  JOB_TIMEOUT_S: int(1).optional(),
  SHUTDOWN_GRACE_S: int(0, 86_400).optional(),
  ENGINE_RESTART_MS: int(0, 600_000).optional(),
  HF_HOME: z.string().min(1).optional(),
  HF_HUB_CACHE: z.string().min(1).optional(),
  HF_ENDPOINT: z.url().optional(),
  HF_TOKEN: z.string().optional(),
  HUGGINGFACE_ACCESS_TOKEN: z.string().optional(),
  HF_HUB_OFFLINE: flag().optional(),
} as const;

const API_KEYS_SCHEMA = z.record(
  z.string(),
  z.union([
    z.string().min(1),
    z.object({ name: z.string().min(1), role: z.enum(['admin', 'user']).optional() }).strict(),
  ]),
);

/** Parses API_KEYS / API_KEYS_FILE JSON. @throws ConfigError naming `variable` */
export function parseApiKeys(text: string, variable: string): ApiKey[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(variable, `not JSON: ${(err as Error).message}`);
  }
  const parsed = API_KEYS_SCHEMA.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConfigError(variable, `${issue?.path.join('.') || 'value'}: ${issue?.message ?? 'invalid'}`);
  }
  const short = Object.keys(parsed.data).find((k) => k.length < 8);
  if (short !== undefined) throw new ConfigError(variable, 'keys must be at least 8 characters');
  return Object.entries(parsed.data).map(([key, v]) =>
    typeof v === 'string' ? { key, name: v, admin: false } : { key, name: v.name, admin: v.role === 'admin' },
  );
}

function readApiKeys(v: { API_KEYS?: string; API_KEYS_FILE?: string }): ApiKey[] {
  const keys: ApiKey[] = [];
  if (v.API_KEYS_FILE) {
    let text: string;
    try {
      text = readFileSync(v.API_KEYS_FILE, 'utf8');
    } catch (err) {
      throw new ConfigError('API_KEYS_FILE', `cannot read ${v.API_KEYS_FILE}: ${(err as Error).message}`);
    }
    keys.push(...parseApiKeys(text, 'API_KEYS_FILE'));
  }
  if (v.API_KEYS) keys.push(...parseApiKeys(v.API_KEYS, 'API_KEYS'));
  return keys;
}

/** A variable this server reads. */
export type EnvKey = keyof typeof ENV_SCHEMA;
type EnvValues = { [K in EnvKey]?: z.output<(typeof ENV_SCHEMA)[K]> };

/** What a variable does and its default, for `fluxql serve --help` and the docs. */
export interface EnvDoc {
  doc: string;
  default?: string;
  /** Roles that read it (`all` runs API and engine in one process). @default every role */
  roles?: readonly ('all' | 'api' | 'worker')[];
}

const ENGINE_ROLES = ['all', 'worker'] as const;
const SCALE_OUT = ['api', 'worker'] as const;
const HTTP_ROLES = ['all', 'api'] as const;

/**
 * Every variable of {@link ENV_SCHEMA}, documented. Typed as a record over the schema's keys, so a variable added
 * to the schema without a line here does not compile, and `serve --help` (generated from this) stays true.
 */
export const ENV_DOCS: Readonly<Record<EnvKey, EnvDoc>> = {
  MODEL_REPO: {
    doc: 'Model: a folder (diffusers or BFL files), a transformer .safetensors file, or a Hugging Face id org/name[@revision]',
    default: 'models/flux-tiny',
    roles: ENGINE_ROLES,
  },
  MODEL_SIZE: { doc: 'Default mode: original, xl, l, m, s', default: 'original', roles: ENGINE_ROLES },
  MODEL_BATCH: { doc: 'Samples per engine batch (1 turns batching off)', default: '4', roles: ENGINE_ROLES },
  AUTH_TOKEN: { doc: 'When set, requests need "Authorization: Bearer <token>"', roles: ['all', 'api'] },
  AUTH_REQUIRED: {
    doc: 'Refuse to start without AUTH_TOKEN (1 in the Docker images; 0 serves an open API)',
    default: '0',
    roles: ['all', 'api'],
  },
  PORT: { doc: 'HTTP port (0 picks a free one)', default: '8000', roles: ['all', 'api'] },
  HOST: { doc: 'HTTP listen address', default: '0.0.0.0', roles: ['all', 'api'] },
  IMAGE_DIR: { doc: 'Where images are written (shared by every node in scale-out)', default: '.cache/images' },
  MAX_QUEUE_DELAY_MS: {
    doc: 'Longest wait of the oldest job for batch companions',
    default: '20',
    roles: ENGINE_ROLES,
  },
  MAX_QUEUE_SIZE: {
    doc: 'Queued jobs beyond which requests get QueueFullError / 429',
    default: '64',
    roles: HTTP_ROLES,
  },
  IMAGE_MAX_AGE_S: { doc: 'Images older than this are deleted', default: '86400' },
  IMAGE_MAX_BYTES: { doc: 'Above this many bytes the oldest images are deleted', default: '2147483648' },
  PUBLIC_URL: {
    doc: "Base of absolute image URLs (e.g. behind a proxy); default: the request's Host",
    roles: HTTP_ROLES,
  },
  PROVIDER: { doc: 'ONNX Runtime execution provider: cpu, webgpu, cuda', default: 'cpu', roles: ENGINE_ROLES },
  THREADS: { doc: 'Intra-op threads of the ONNX pipeline', roles: ENGINE_ROLES },
  CACHE_DIR: { doc: 'Compiled-engine cache folder', default: '.cache/engines', roles: ENGINE_ROLES },
  FLUXQL_CACHE_DIR: { doc: 'Alias of CACHE_DIR (CACHE_DIR wins)', roles: ENGINE_ROLES },
  FLUXQL_ORT_SPIN: {
    doc: "Let ONNX Runtime's threads spin-wait between runs (ORT's default; off here) (1/0)",
    default: '0',
    roles: ENGINE_ROLES,
  },
  WARM_MODES: {
    doc: 'Modes compiled and loaded in the background at start: all, default, or a list such as original,xl',
    default: 'all',
    roles: ENGINE_ROLES,
  },
  LORA_DIR: { doc: 'The only folder LoRA files are read from', roles: ENGINE_ROLES },
  REDIS_URL: {
    doc: 'Shared Redis of a scale-out deployment (redis:// or rediss://); required by api/worker',
    roles: SCALE_OUT,
  },
  REDIS_PREFIX: { doc: 'Prefix of every Redis key, channel and queue', default: 'fluxql', roles: SCALE_OUT },
  JOB_RETRIES: { doc: 'Times a job is started again after its worker was lost', default: '1', roles: ['worker'] },
  WORKER_LOCK_MS: {
    doc: "BullMQ lock: a lost worker's job comes back after about this long",
    default: '30000',
    roles: ['worker'],
  },
  WORKER_ID: { doc: 'Name of a worker in adverts and BullMQ', default: '<hostname>-<pid>', roles: ['worker'] },
  JOB_HISTORY_S: { doc: 'Seconds job records stay readable in Redis', default: '86400', roles: SCALE_OUT },
  ENGINE: {
    doc: 'onnx (ONNX Runtime) or cuda (the native engine); --engine overrides',
    default: 'onnx',
    roles: ENGINE_ROLES,
  },
  CUDA_ENGINE_BIN: {
    doc: "The native engine's executable",
    default: 'engines/cuda/build/fluxql-engine',
    roles: ENGINE_ROLES,
  },
  CUDA_PRECISION: {
    doc: 'Precision the native engine loads the model in: f32, bf16, fp8',
    default: 'bf16',
    roles: ENGINE_ROLES,
  },
  CUDA_BENCH_RESULTS: {
    doc: "The native engine's benchmark shown by `models`",
    default: 'bench/results/cuda-h100.json',
    roles: ENGINE_ROLES,
  },
  CUDA_LORA_MAX_MB: {
    doc: 'GPU memory (MiB) the native engine may hold for LoRA adapters (loaded factors and built sets)',
    default: '4096',
    roles: ENGINE_ROLES,
  },
  CUDA_STEP_CACHE: {
    doc:
      'Step caching (First-Block-Cache) of the native engine for modes without a calibrated threshold of their own ' +
      '(L, M, S calibrate theirs): the relative-change threshold, e.g. 0.1; unset: off',
    roles: ENGINE_ROLES,
  },
  CUDA_PLANNER_FP8ROW: {
    doc:
      "The native engine's L/M/S planner also measures fp8row (per-token and per-channel fp8 scales) and picks per " +
      'layer among bf16, fp8 and fp8row (1/0; not yet verified on a GPU)',
    default: '0',
    roles: ENGINE_ROLES,
  },
  MODES_RESULTS: {
    doc: "The mode benchmark's results shown by `models`",
    default: 'bench/results/modes.json',
    roles: HTTP_ROLES,
  },
  CONTROL_IMAGE_ALLOW_PRIVATE_URLS: {
    doc: 'Fetch controlImage URLs on private/loopback addresses (1/0)',
    default: '0',
    roles: HTTP_ROLES,
  },
  LOG_LEVEL: {
    doc: 'Log level: fatal, error, warn, info, debug, trace, silent (JSON lines on stdout)',
    default: 'info',
  },
  LOG_PRETTY: { doc: 'Human-readable log lines instead of JSON (1/0)', default: '0' },
  WEBHOOK_SECRET: { doc: 'HMAC-SHA256 key signing queue webhooks (16+ characters)', roles: HTTP_ROLES },
  WEBHOOK_ALLOW_PRIVATE_URLS: {
    doc: 'Let webhook URLs point at private/loopback addresses (1/0)',
    default: '0',
    roles: HTTP_ROLES,
  },
  WEBHOOK_MAX_ATTEMPTS: { doc: 'Webhook delivery attempts', default: '5', roles: HTTP_ROLES },
  WEBHOOK_RETRY_BASE_MS: { doc: 'First webhook retry delay, doubling', default: '1000', roles: HTTP_ROLES },
  API_KEYS: {
    doc: 'API keys as JSON: {"<key>": "<name>"} or {"<key>": {"name": "ops", "role": "admin"}}',
    roles: HTTP_ROLES,
  },
  API_KEYS_FILE: { doc: 'A JSON file of API keys (same shape as API_KEYS)', roles: HTTP_ROLES },
  METRICS_TOKEN: { doc: 'Bearer token that /metrics requires (unset: open)', roles: HTTP_ROLES },
  CORS_ORIGINS: {
    doc: 'Comma-separated origins allowed by CORS (unset: any origin, never with credentials)',
    roles: HTTP_ROLES,
  },
  WS_MAX_PAYLOAD: {
    doc: 'Largest WebSocket message in bytes (connection_init included)',
    default: '65536',
    roles: HTTP_ROLES,
  },
  GRAPHQL_MAX_DEPTH: { doc: 'GraphQL document depth limit', default: '12', roles: HTTP_ROLES },
  GRAPHQL_MAX_ALIASES: { doc: 'GraphQL aliases limit', default: '15', roles: HTTP_ROLES },
  GRAPHQL_MAX_TOKENS: {
    doc: 'GraphQL lexical tokens limit (checked while parsing)',
    default: '2000',
    roles: HTTP_ROLES,
  },
  GRAPHQL_MAX_COST: { doc: 'GraphQL cost limit (graphql-armor)', default: '5000', roles: HTTP_ROLES },
  GRAPHQL_MAX_DIRECTIVES: { doc: 'GraphQL directives limit', default: '50', roles: HTTP_ROLES },
  MAX_GENERATIONS_PER_OPERATION: {
    doc: 'Most generateImage fields in one GraphQL operation',
    default: '4',
    roles: HTTP_ROLES,
  },
  HTTP_REQUEST_TIMEOUT_S: { doc: 'Seconds to receive a whole request', default: '60', roles: HTTP_ROLES },
  HTTP_HEADERS_TIMEOUT_S: { doc: 'Seconds to receive the request headers', default: '20', roles: HTTP_ROLES },
  JOB_TIMEOUT_S: { doc: 'Per-job deadline from submission; past it the job fails with code timeout' },
  SHUTDOWN_GRACE_S: { doc: 'On SIGTERM, seconds accepted jobs may take before the rest are cancelled', default: '30' },
  ENGINE_RESTART_MS: {
    doc: 'First delay before a crashed engine process is restarted (doubling, up to 30 s)',
    default: '200',
    roles: ENGINE_ROLES,
  },
  HF_HOME: {
    doc: 'Hugging Face home; the hub cache is <HF_HOME>/hub',
    default: '~/.cache/huggingface',
    roles: ENGINE_ROLES,
  },
  HF_HUB_CACHE: {
    doc: 'Hugging Face hub cache folder (models--org--name/...)',
    default: '<HF_HOME>/hub',
    roles: ENGINE_ROLES,
  },
  HF_ENDPOINT: { doc: 'Hugging Face hub URL', default: 'https://huggingface.co', roles: ENGINE_ROLES },
  HF_TOKEN: {
    doc: 'Hugging Face access token for gated/private models (HUGGINGFACE_ACCESS_TOKEN also works)',
    roles: ENGINE_ROLES,
  },
  HUGGINGFACE_ACCESS_TOKEN: { doc: 'Same as HF_TOKEN (HF_TOKEN wins when both are set)', roles: ENGINE_ROLES },
  HF_HUB_OFFLINE: {
    doc: 'Never touch the network: serve MODEL_REPO ids from the cache only (1/0)',
    default: '0',
    roles: ENGINE_ROLES,
  },
};

/** Variables whose values never appear in error messages. */
const SECRET = /TOKEN|REDIS_URL/;

function hubOptions(v: EnvValues, env: NodeJS.ProcessEnv): HubOptions {
  const home = v.HF_HOME ? { HF_HOME: resolve(v.HF_HOME) } : {};
  const cacheDir = v.HF_HUB_CACHE ? resolve(v.HF_HUB_CACHE) : defaultHubCacheDir({ ...env, ...home });
  const token = v.HF_TOKEN || v.HUGGINGFACE_ACCESS_TOKEN;
  return {
    cacheDir,
    endpoint: v.HF_ENDPOINT ?? 'https://huggingface.co',
    offline: v.HF_HUB_OFFLINE ?? false,
    ...(token ? { token } : {}),
  };
}

/** Only the Hugging Face settings (for commands such as `generate` that read no server settings). */
export function loadHubOptions(env: NodeJS.ProcessEnv = process.env): HubOptions {
  const keys = [
    'HF_HOME',
    'HF_HUB_CACHE',
    'HF_ENDPOINT',
    'HF_TOKEN',
    'HUGGINGFACE_ACCESS_TOKEN',
    'HF_HUB_OFFLINE',
  ] as const;
  return hubOptions(parseEnv(env, keys), env);
}

/** `FLUXQL_DEBUG=1`: the CLI prints stack traces under its one-line errors. Never throws. */
export function cliDebugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.FLUXQL_DEBUG !== undefined && env.FLUXQL_DEBUG !== '' && env.FLUXQL_DEBUG !== '0';
}

/** Parses `keys` of `env` (empty strings count as unset). @throws ConfigError naming the first bad variable. */
function parseEnv(env: NodeJS.ProcessEnv, keys: readonly EnvKey[]): EnvValues {
  const v: EnvValues = {};
  for (const key of keys) {
    const raw = env[key];
    if (raw === undefined || raw === '') continue;
    const parsed = ENV_SCHEMA[key].safeParse(raw);
    if (!parsed.success) {
      const got = SECRET.test(key) ? '' : ` (got "${raw}")`;
      throw new ConfigError(key, `${parsed.error.issues[0]?.message ?? 'invalid value'}${got}`);
    }
    (v as Record<string, unknown>)[key] = parsed.data;
  }
  return v;
}

/** What every command that runs the ONNX pipeline (serve, compile, generate, conformance) takes from the environment. */
export type PipelineSettings = Pick<ServerConfig, 'cacheDir' | 'loraDir' | 'ortSpin'>;

function pipelineSettings(v: EnvValues): PipelineSettings {
  // One cache setting: CACHE_DIR, with FLUXQL_CACHE_DIR (the name `fluxql compile` once read) as an alias.
  const cacheDir = v.CACHE_DIR ?? v.FLUXQL_CACHE_DIR;
  return {
    ortSpin: v.FLUXQL_ORT_SPIN ?? false,
    ...(cacheDir ? { cacheDir: resolve(cacheDir) } : {}),
    ...(v.LORA_DIR ? { loraDir: resolve(v.LORA_DIR) } : {}),
  };
}

/**
 * The pipeline settings alone (CACHE_DIR / FLUXQL_CACHE_DIR, LORA_DIR, FLUXQL_ORT_SPIN), for the CLI's tools.
 * @throws ConfigError naming the first bad variable.
 */
/** The engine ENGINE names (`onnx` when unset), for commands other than `serve` (`compile` reads it as serve does). */
export function loadEngineChoice(env: NodeJS.ProcessEnv = process.env): ServerConfig['engine'] {
  const v = env.ENGINE;
  if (v === undefined || v === '') return 'onnx';
  if (v === 'onnx' || v === 'cuda') return v;
  throw new ConfigError('ENGINE', `"${v}" is not an engine: onnx or cuda`);
}

export function loadPipelineSettings(env: NodeJS.ProcessEnv = process.env): PipelineSettings {
  return pipelineSettings(parseEnv(env, ['CACHE_DIR', 'FLUXQL_CACHE_DIR', 'LORA_DIR', 'FLUXQL_ORT_SPIN']));
}

/**
 * Reads the configuration from `env` (empty strings count as unset), applying `overrides` last.
 * @throws ConfigError naming the first bad variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<ServerConfig> = {}): ServerConfig {
  const v = parseEnv(env, Object.keys(ENV_SCHEMA) as EnvKey[]);
  const config: ServerConfig = {
    modelRepo:
      v.MODEL_REPO && isHubModelSpec(v.MODEL_REPO) ? v.MODEL_REPO : resolve(v.MODEL_REPO ?? EMBEDDED_MODEL_DIR),
    hub: hubOptions(v, env),
    modelSize: v.MODEL_SIZE ?? 'original',
    modelBatch: v.MODEL_BATCH ?? 4,
    port: v.PORT ?? 8000,
    host: v.HOST ?? '0.0.0.0',
    imageDir: resolve(v.IMAGE_DIR ?? '.cache/images'),
    maxQueueDelayMs: v.MAX_QUEUE_DELAY_MS ?? 20,
    maxQueueSize: v.MAX_QUEUE_SIZE ?? 64,
    imageMaxAgeSeconds: v.IMAGE_MAX_AGE_S ?? 86_400,
    imageMaxBytes: v.IMAGE_MAX_BYTES ?? 2 * 1024 ** 3,
    provider: v.PROVIDER ?? 'cpu',
    redisPrefix: v.REDIS_PREFIX ?? 'fluxql',
    jobRetries: v.JOB_RETRIES ?? 1,
    workerLockMs: v.WORKER_LOCK_MS ?? 30_000,
    jobHistorySeconds: v.JOB_HISTORY_S ?? 86_400,
    engine: v.ENGINE ?? 'onnx',
    cudaEngineBin: v.CUDA_ENGINE_BIN
      ? resolve(v.CUDA_ENGINE_BIN)
      : resolve(REPO_ROOT, 'engines/cuda/build/fluxql-engine'),
    cudaPrecision: v.CUDA_PRECISION ?? 'bf16',
    cudaBenchResults: v.CUDA_BENCH_RESULTS
      ? resolve(v.CUDA_BENCH_RESULTS)
      : resolve(REPO_ROOT, 'bench/results/cuda-h100.json'),
    cudaLoraMaxMb: v.CUDA_LORA_MAX_MB ?? 4096,
    ...(v.CUDA_STEP_CACHE !== undefined ? { cudaStepCache: v.CUDA_STEP_CACHE } : {}),
    cudaPlannerFp8row: v.CUDA_PLANNER_FP8ROW ?? false,
    modesResults: v.MODES_RESULTS ? resolve(v.MODES_RESULTS) : resolve(REPO_ROOT, 'bench/results/modes.json'),
    controlImageAllowPrivateUrls: v.CONTROL_IMAGE_ALLOW_PRIVATE_URLS ?? false,
    warmModes:
      v.WARM_MODES === undefined || v.WARM_MODES === 'all' ? 'all' : v.WARM_MODES === 'default' ? [] : v.WARM_MODES,
    logLevel: v.LOG_LEVEL ?? 'info',
    logPretty: v.LOG_PRETTY ?? false,
    webhookAllowPrivateUrls: v.WEBHOOK_ALLOW_PRIVATE_URLS ?? false,
    webhookMaxAttempts: v.WEBHOOK_MAX_ATTEMPTS ?? 5,
    webhookRetryBaseMs: v.WEBHOOK_RETRY_BASE_MS ?? 1000,
    ...(v.WEBHOOK_SECRET ? { webhookSecret: v.WEBHOOK_SECRET } : {}),
    apiKeys: readApiKeys(v),
    wsMaxPayload: v.WS_MAX_PAYLOAD ?? 64 * 1024,
    graphqlLimits: {
      maxDepth: v.GRAPHQL_MAX_DEPTH ?? 12,
      maxAliases: v.GRAPHQL_MAX_ALIASES ?? 15,
      maxTokens: v.GRAPHQL_MAX_TOKENS ?? 2000,
      maxCost: v.GRAPHQL_MAX_COST ?? 5000,
      maxDirectives: v.GRAPHQL_MAX_DIRECTIVES ?? 50,
    },
    maxGenerationsPerOperation: v.MAX_GENERATIONS_PER_OPERATION ?? 4,
    httpRequestTimeoutSeconds: v.HTTP_REQUEST_TIMEOUT_S ?? 60,
    httpHeadersTimeoutSeconds: Math.min(v.HTTP_HEADERS_TIMEOUT_S ?? 20, v.HTTP_REQUEST_TIMEOUT_S ?? 60),
    shutdownGraceSeconds: v.SHUTDOWN_GRACE_S ?? 30,
    ...(v.JOB_TIMEOUT_S ? { jobTimeoutSeconds: v.JOB_TIMEOUT_S } : {}),
    ...(v.METRICS_TOKEN ? { metricsToken: v.METRICS_TOKEN } : {}),
    ...(v.CORS_ORIGINS && v.CORS_ORIGINS.length > 0 ? { corsOrigins: v.CORS_ORIGINS } : {}),
    engineRestartMs: v.ENGINE_RESTART_MS ?? 200,
    authRequired: v.AUTH_REQUIRED ?? false,
    ...(v.REDIS_URL ? { redisUrl: v.REDIS_URL } : {}),
    ...(v.WORKER_ID ? { workerId: v.WORKER_ID } : {}),
    ...(v.AUTH_TOKEN ? { authToken: v.AUTH_TOKEN } : {}),
    ...(v.PUBLIC_URL ? { publicUrl: v.PUBLIC_URL.replace(/\/+$/, '') } : {}),
    ...(v.THREADS ? { threads: v.THREADS } : {}),
    ...pipelineSettings(v),
  };
  return { ...config, ...overrides };
}
