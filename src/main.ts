/**
 * @file Composition root: the only module that wires every layer (config → pipeline executor → service → api).
 * The CLI's `serve` command calls {@link startServer}; tests call it with port 0.
 */
import { buildApp } from './api/index.ts';
import { loadConfig, type ServerConfig } from './config.ts';
import { createGenerationService, type StepExecutor } from './service/index.ts';

/** A running server. */
export interface StartedServer {
  /** e.g. `http://127.0.0.1:8000`. */
  url: string;
  port: number;
  /** Stops accepting, cancels queued jobs, closes sockets and the executor's worker. */
  stop(): Promise<void>;
}

/** Test and embedding hooks. */
export interface StartServerDeps {
  /** Use this executor instead of loading `config.modelRepo` (it is closed on `stop`). */
  executor?: StepExecutor;
}

/** Loads the model, starts the scheduler and serves HTTP/WebSocket on `config.host:config.port`. */
export async function startServer(config: ServerConfig, deps: StartServerDeps = {}): Promise<StartedServer> {
  // Imported lazily so an injected executor (tests) does not load the ONNX pipeline at all.
  const executor =
    deps.executor ??
    (await (
      await import('./pipeline/index.ts')
    ).createFluxExecutor({
      modelDir: config.modelRepo,
      provider: config.provider,
      maxBatch: config.modelBatch,
      ...(config.threads ? { threads: config.threads } : {}),
      ...(config.cacheDir ? { cacheDir: config.cacheDir } : {}),
    }));
  let service: Awaited<ReturnType<typeof createGenerationService>>;
  try {
    service = await createGenerationService({
      executor,
      batchSize: config.modelBatch,
      defaultSize: config.modelSize,
      maxQueueDelayMs: config.maxQueueDelayMs,
      maxQueueSize: config.maxQueueSize,
      images: {
        dir: config.imageDir,
        maxAgeMs: config.imageMaxAgeSeconds * 1000,
        maxBytes: config.imageMaxBytes,
      },
    });
  } catch (err) {
    // E.g. MODEL_SIZE names a mode the engine lacks: do not leave the worker thread running.
    await executor.close();
    throw err;
  }
  const app = buildApp({
    service,
    ...(config.authToken ? { authToken: config.authToken } : {}),
    ...(config.publicUrl ? { publicUrl: config.publicUrl } : {}),
  });
  let running: Awaited<ReturnType<typeof app.start>>;
  try {
    running = await app.start(config.port, config.host);
  } catch (err) {
    await service.close();
    throw err;
  }
  let stopping: Promise<void> | undefined;
  return {
    url: running.url,
    port: running.port,
    stop: () => {
      stopping ??= (async () => {
        await service.close();
        await running.stop();
      })();
      return stopping;
    },
  };
}

/** Options of the CLI's `serve` command. */
export interface ServeOptions {
  /** Process role; only `all` (API + engine in one process) exists so far. @default 'all' */
  role?: string;
  /** `onnx` (ONNX Runtime worker, the default). The native CUDA engine is not wired into the server yet. */
  engine?: string;
}

/**
 * `fluxql serve`: reads the environment (see `config.ts`), starts the server, logs its URL and stops cleanly on
 * SIGINT/SIGTERM (queued jobs are cancelled, the running step finishes).
 */
export async function serveFromEnv(options: ServeOptions = {}): Promise<StartedServer> {
  if (options.role && options.role !== 'all') throw new Error(`--role ${options.role} is not supported; use "all"`);
  if (options.engine && options.engine !== 'onnx') {
    throw new Error(`--engine ${options.engine} is not wired into the server yet; use "onnx"`);
  }
  const config = loadConfig();
  const server = await startServer(config);
  console.log(`[fluxql] serving ${config.modelRepo} at ${server.url} (GraphQL and GraphiQL at ${server.url}/graphql)`);
  const shutdown = (signal: string) => {
    console.log(`[fluxql] ${signal}: starting graceful shutdown`);
    server.stop().then(
      () => process.exit(0),
      (err) => {
        console.error('[fluxql] shutdown failed:', err);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  return server;
}
