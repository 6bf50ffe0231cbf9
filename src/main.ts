/**
 * @file Composition root: the only module that wires every layer (config → pipeline executor → service → api).
 * The CLI's `serve` command calls {@link serve} on its checked settings (`serve-settings.ts`): one process
 * ({@link startServer}, the default) or, for scale-out over Redis, an API node ({@link startApiNode}) or an engine
 * worker ({@link startWorkerNode}). Tests call them with port 0.
 */
import { Authenticator, buildApp } from './api/index.ts';
import { ConfigError, type ServerConfig } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import type { ServeSettings } from './serve-settings.ts';
import { createGenerationService, type GenerationService, type StepExecutor } from './service/index.ts';
import { resolveModelPath } from './shared/hub/index.ts';

/** A running server. */
export interface StartedServer {
  /** e.g. `http://127.0.0.1:8000`. */
  url: string;
  port: number;
  /** Stops accepting, cancels queued jobs, closes sockets and the executor's worker. */
  stop(): Promise<void>;
  /**
   * Graceful shutdown (SIGTERM): refuses new jobs (REST 503 with Retry-After, GraphQL `ServiceUnavailableError`),
   * lets queued and running jobs finish for at most `graceMs` (SHUTDOWN_GRACE_S), cancels what is left with a
   * reason saying so, lets the replies under way be written, then stops like {@link stop}.
   */
  drain(graceMs: number): Promise<{ finished: number; canceled: number }>;
}

/** Test and embedding hooks. */
export interface StartServerDeps {
  /** Use this executor instead of loading `config.modelRepo` (it is closed on `stop`). */
  executor?: StepExecutor;
  /** Log here instead of a logger made from `config` (LOG_LEVEL, LOG_PRETTY) writing to stdout. */
  logger?: Logger;
}

/** Loads the model, starts the scheduler and serves HTTP/WebSocket on `config.host:config.port`. */
export async function startServer(config: ServerConfig, deps: StartServerDeps = {}): Promise<StartedServer> {
  const logger = deps.logger ?? loggerOf(config);
  const executor = deps.executor ?? (await createExecutor(config, logger));
  let service: GenerationService;
  try {
    service = await createGenerationService({
      executor,
      batchSize: config.modelBatch,
      defaultSize: config.modelSize,
      maxQueueDelayMs: config.maxQueueDelayMs,
      maxQueueSize: config.maxQueueSize,
      images: imageOptions(config),
      controlImages: { allowPrivateUrls: config.controlImageAllowPrivateUrls },
      modeResults: config.modesResults,
      warmModes: config.warmModes,
      log: errorLog(logger),
      logger,
      ...jobTimeout(config),
    });
  } catch (err) {
    // E.g. MODEL_SIZE names a mode the engine lacks: do not leave the engine process running.
    await executor.close();
    throw err;
  }
  return serveHttp(service, config, logger);
}

/**
 * Scale-out API node (`--role api`): GraphQL/REST over the jobs in Redis; no engine. Starts even while Redis is
 * down (readiness false, requests get ServiceUnavailableError) and recovers when it comes back.
 */
export async function startApiNode(
  config: ServerConfig,
  deps: Pick<StartServerDeps, 'logger'> = {},
): Promise<StartedServer> {
  const logger = deps.logger ?? loggerOf(config);
  const log = errorLog(logger);
  const redisUrl = requireRedisUrl(config, 'api');
  const { createRedisApiBackend } = await import('./service/redis/index.ts');
  const service = await createGenerationService({
    images: imageOptions(config),
    controlImages: { allowPrivateUrls: config.controlImageAllowPrivateUrls },
    modeResults: config.modesResults,
    log,
    logger,
    ...jobTimeout(config),
    backend: () =>
      createRedisApiBackend({
        url: redisUrl,
        prefix: config.redisPrefix,
        maxQueueSize: config.maxQueueSize,
        historySeconds: config.jobHistorySeconds,
        log,
        logger,
      }),
  });
  return serveHttp(service, config, logger);
}

/** A running worker node. */
export interface StartedWorker {
  workerId: string;
  stop(): Promise<void>;
}

/**
 * Scale-out worker (`--role worker`): loads the model and pulls jobs from Redis (BullMQ) up to MODEL_BATCH at a
 * time, writing images to the shared IMAGE_DIR. Serves no HTTP.
 */
export async function startWorkerNode(config: ServerConfig, deps: StartServerDeps = {}): Promise<StartedWorker> {
  const logger = deps.logger ?? loggerOf(config);
  const log = errorLog(logger);
  const redisUrl = requireRedisUrl(config, 'worker');
  const { startRedisWorker } = await import('./service/redis/index.ts');
  const executor = deps.executor ?? (await createExecutor(config, logger));
  let worker: Awaited<ReturnType<typeof startRedisWorker>>;
  try {
    worker = await startRedisWorker({
      url: redisUrl,
      prefix: config.redisPrefix,
      executor,
      batchSize: config.modelBatch,
      defaultSize: config.modelSize,
      maxQueueDelayMs: config.maxQueueDelayMs,
      historySeconds: config.jobHistorySeconds,
      lockMs: config.workerLockMs,
      retries: config.jobRetries,
      ...(config.workerId ? { workerId: config.workerId } : {}),
      warmModes: config.warmModes,
      images: imageOptions(config),
      log,
      logger,
    });
  } catch (err) {
    await executor.close();
    throw err;
  }
  return { workerId: worker.id, stop: () => worker.close() };
}

function loggerOf(config: ServerConfig): Logger {
  return createLogger({ level: config.logLevel, pretty: config.logPretty });
}

/** The `(message, err)` callback the service and Redis clients report unexpected errors through. */
function errorLog(logger: Logger): (message: string, err?: unknown) => void {
  return (message, err) => (err === undefined ? logger.warn(message) : logger.error({ err }, message));
}

function requireRedisUrl(config: ServerConfig, role: string): string {
  if (!config.redisUrl) throw new ConfigError('REDIS_URL', `required by --role ${role} (e.g. redis://redis:6379)`);
  return config.redisUrl;
}

function jobTimeout(config: ServerConfig): { jobTimeoutMs?: number } {
  return config.jobTimeoutSeconds ? { jobTimeoutMs: config.jobTimeoutSeconds * 1000 } : {};
}

/** The API keys of a configuration: API_KEYS / API_KEYS_FILE, and AUTH_TOKEN as an admin key named `admin`. */
export function authenticatorOf(config: ServerConfig): Authenticator {
  return new Authenticator([
    ...config.apiKeys,
    ...(config.authToken ? [{ key: config.authToken, name: 'admin', admin: true }] : []),
  ]);
}

function imageOptions(config: ServerConfig) {
  return { dir: config.imageDir, maxAgeMs: config.imageMaxAgeSeconds * 1000, maxBytes: config.imageMaxBytes };
}

/** MODEL_REPO as a local path: a Hugging Face id is looked up in (or downloaded into) the hub cache first. */
async function localModelDir(config: ServerConfig, logger: Logger): Promise<string> {
  let lastLogged = -1;
  return resolveModelPath(config.modelRepo, {
    hub: config.hub,
    onLog: (m) => logger.info({ component: 'hub', model: config.modelRepo }, m),
    onProgress: ({ file, bytes, totalBytes }) => {
      // One line per 5% of the whole download: progress shows in container logs without flooding them.
      const pct = totalBytes > 0 ? Math.floor((bytes / totalBytes) * 20) * 5 : 100;
      if (pct === lastLogged) return;
      lastLogged = pct;
      logger.info(
        { component: 'hub', model: config.modelRepo, file, bytes, totalBytes, percent: pct },
        `downloading ${config.modelRepo}: ${pct}% (${(bytes / 1e6).toFixed(1)} of ${(totalBytes / 1e6).toFixed(1)} MB, ${file})`,
      );
    },
  });
}

// Imported lazily so an injected executor (tests) and API nodes do not load the ONNX pipeline at all.
async function createExecutor(config: ServerConfig, logger: Logger): Promise<StepExecutor> {
  const modelDir = await localModelDir(config, logger);
  if (config.engine === 'cuda') {
    // The native engine (engines/cuda) as a child process; this path never loads onnxruntime-node.
    const { createCudaExecutor } = await import('./pipeline/cuda-executor.ts');
    const { defaultCacheDir } = await import('./pipeline/flux/engine-cache.ts');
    return createCudaExecutor({
      modelDir,
      engineBin: config.cudaEngineBin,
      precision: config.cudaPrecision,
      // The per-layer planner's manifests (L and M) live beside the compiled engines.
      cacheDir: config.cacheDir ?? defaultCacheDir(),
      maxBatch: config.modelBatch,
      benchResults: config.cudaBenchResults,
      ...(config.loraDir ? { loraDir: config.loraDir } : {}),
      loraMaxMb: config.cudaLoraMaxMb,
      plannerFp8row: config.cudaPlannerFp8row,
      ...(config.cudaStepCache !== undefined ? { stepCache: { threshold: config.cudaStepCache } } : {}),
      onLog: (line) => logger.info({ component: 'cuda-engine' }, line),
    });
  }
  const { createFluxExecutor } = await import('./pipeline/index.ts');
  return createFluxExecutor({
    modelDir,
    provider: config.provider,
    maxBatch: config.modelBatch,
    ...(config.threads ? { threads: config.threads } : {}),
    ...(config.cacheDir ? { cacheDir: config.cacheDir } : {}),
    ...(config.loraDir ? { loraDir: config.loraDir } : {}),
    ortSpin: config.ortSpin,
    restartBackoffMs: config.engineRestartMs,
    log: (message) => logger.warn({ component: 'engine-supervisor' }, message),
  });
}

async function serveHttp(service: GenerationService, config: ServerConfig, logger: Logger): Promise<StartedServer> {
  const app = buildApp({
    service,
    logger,
    webhooks: {
      allowPrivateUrls: config.webhookAllowPrivateUrls,
      maxAttempts: config.webhookMaxAttempts,
      retryBaseMs: config.webhookRetryBaseMs,
      ...(config.webhookSecret ? { secret: config.webhookSecret } : {}),
    },
    auth: authenticatorOf(config),
    ...(config.publicUrl ? { publicUrl: config.publicUrl } : {}),
    ...(config.metricsToken ? { metricsToken: config.metricsToken } : {}),
    ...(config.corsOrigins ? { corsOrigins: config.corsOrigins } : {}),
    limits: { ...config.graphqlLimits, maxGenerations: config.maxGenerationsPerOperation },
    wsMaxPayload: config.wsMaxPayload,
    requestTimeoutMs: config.httpRequestTimeoutSeconds * 1000,
    headersTimeoutMs: config.httpHeadersTimeoutSeconds * 1000,
  });
  let running: Awaited<ReturnType<typeof app.start>>;
  try {
    running = await app.start(config.port, config.host);
  } catch (err) {
    await service.close();
    throw err;
  }
  let stopping: Promise<void> | undefined;
  const stop = (replyGraceMs = 0) => {
    stopping ??= (async () => {
      await service.close();
      await running.stop(replyGraceMs);
    })();
    return stopping;
  };
  return {
    url: running.url,
    port: running.port,
    stop: () => stop(),
    drain: async (graceMs) => {
      const result = await service.drain(graceMs);
      // The jobs are over; give the REST replies and SSE streams of their ends a moment to go out.
      await stop(5000);
      return result;
    },
  };
}

export type { ServeOptions } from './serve-settings.ts';

/**
 * `fluxql serve`: starts the server on checked settings (`serve-settings.ts`), logs its URL and stops cleanly on
 * SIGINT/SIGTERM: an HTTP node drains (new jobs refused, accepted ones finish within SHUTDOWN_GRACE_S, the rest are
 * cancelled), a worker stops (its queued jobs are cancelled, the running step finishes).
 */
export async function serve({ role, config }: ServeSettings): Promise<StartedServer | StartedWorker> {
  const logger = loggerOf(config);
  let node: StartedServer | StartedWorker;
  if (role === 'worker') {
    node = await startWorkerNode(config, { logger });
    logger.info(
      { role, workerId: node.workerId, model: config.modelRepo },
      `worker ${node.workerId} serving ${config.modelRepo}, taking jobs from Redis`,
    );
  } else {
    node = role === 'api' ? await startApiNode(config, { logger }) : await startServer(config, { logger });
    const what = role === 'api' ? 'API node' : `serving ${config.modelRepo} on engine ${config.engine}`;
    logger.info(
      { role, url: node.url, model: role === 'api' ? undefined : config.modelRepo },
      `${what} at ${node.url} (GraphQL and GraphiQL at ${node.url}/graphql)`,
    );
  }
  const shutdown = (signal: string) => {
    logger.info({ signal }, `${signal}: starting graceful shutdown`);
    const done =
      'drain' in node
        ? node.drain(config.shutdownGraceSeconds * 1000).then(({ finished, canceled }) => {
            logger.info({ finished, canceled }, `drained: ${finished} jobs finished, ${canceled} cancelled`);
          })
        : node.stop();
    done.then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  return node;
}
