/**
 * @file Server configuration from the environment, TheStage container style (MODEL_REPO, MODEL_SIZE,
 * MODEL_BATCH, AUTH_TOKEN, PORT, HOST) plus our own knobs. Bad values fail at startup with the variable named.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { LOG_LEVELS, type LogLevel } from './log.ts';

/** Everything `startServer` needs. */
export interface ServerConfig {
  /** Model directory (diffusers layout). MODEL_REPO. @default {@link EMBEDDED_MODEL_DIR} (flux-mini, else flux-tiny) */
  modelRepo: string;
  /** Default mode as its size token: `original`, `xl`, `l`, `m`, `s`. MODEL_SIZE. @default 'original' */
  modelSize: string;
  /** Samples per engine batch; 1 turns batching off. MODEL_BATCH. @default 4 */
  modelBatch: number;
  /** When set, requests need `Authorization: Bearer <token>`. AUTH_TOKEN. */
  authToken?: string;
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
  provider: 'cpu' | 'webgpu' | 'cuda';
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

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');

/** flux-tiny: FLUX.1-dev's structure with tiny random weights; the model of the conformance fixtures. */
export const FLUX_TINY_DIR = resolve(REPO_ROOT, 'models/flux-tiny');
/** flux-mini: FLUX.1-dev's structure trained on the caption grammar (issue 14; tools/train-mini). */
export const FLUX_MINI_DIR = resolve(REPO_ROOT, 'models/flux-mini');
/** Whether flux-mini is installed (its weights come from a GPU run; the repository works without them). */
export const HAS_FLUX_MINI = existsSync(join(FLUX_MINI_DIR, 'model_index.json'));
/** The embedded model served by default: flux-mini when installed (it draws what the prompt asks), else flux-tiny. */
export const EMBEDDED_MODEL_DIR = HAS_FLUX_MINI ? FLUX_MINI_DIR : FLUX_TINY_DIR;

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max);
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
    .pipe(z.enum(['original', 'xl', 'l', 'm', 's']))
    .optional(),
  MODEL_BATCH: int(1, 64).optional(),
  AUTH_TOKEN: z.string().optional(),
  PORT: int(0, 65535).optional(),
  HOST: z.string().min(1).optional(),
  IMAGE_DIR: z.string().min(1).optional(),
  MAX_QUEUE_DELAY_MS: int(0, 60_000).optional(),
  MAX_QUEUE_SIZE: int(1).optional(),
  IMAGE_MAX_AGE_S: int(1).optional(),
  IMAGE_MAX_BYTES: int(1).optional(),
  PUBLIC_URL: z.url().optional(),
  PROVIDER: z.enum(['cpu', 'webgpu', 'cuda']).optional(),
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
} as const;

type EnvKey = keyof typeof ENV_SCHEMA;
type EnvValues = { [K in EnvKey]?: z.output<(typeof ENV_SCHEMA)[K]> };

/** Parses `keys` of `env` (empty strings count as unset). @throws ConfigError naming the first bad variable. */
function parseEnv(env: NodeJS.ProcessEnv, keys: readonly EnvKey[]): EnvValues {
  const v: EnvValues = {};
  for (const key of keys) {
    const raw = env[key];
    if (raw === undefined || raw === '') continue;
    const parsed = ENV_SCHEMA[key].safeParse(raw);
    if (!parsed.success) throw new ConfigError(key, parsed.error.issues[0]?.message ?? 'invalid value');
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
    modelRepo: resolve(v.MODEL_REPO ?? EMBEDDED_MODEL_DIR),
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
    ...(v.REDIS_URL ? { redisUrl: v.REDIS_URL } : {}),
    ...(v.WORKER_ID ? { workerId: v.WORKER_ID } : {}),
    ...(v.AUTH_TOKEN ? { authToken: v.AUTH_TOKEN } : {}),
    ...(v.PUBLIC_URL ? { publicUrl: v.PUBLIC_URL.replace(/\/+$/, '') } : {}),
    ...(v.THREADS ? { threads: v.THREADS } : {}),
    ...pipelineSettings(v),
  };
  return { ...config, ...overrides };
}
