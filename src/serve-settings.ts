/**
 * @file What `fluxql serve` checks before it loads the server: the role, the engine, the environment (`config.ts`)
 * and the token an authenticated API needs. Kept apart from `main.ts` so that a bad setting fails at once, before the
 * API, service and pipeline modules load (most of a second of a start on two cores).
 */
import { ConfigError, loadConfig, type ServerConfig } from './config.ts';

/** Options of the CLI's `serve` command. */
export interface ServeOptions {
  /**
   * `all`: API and engine in one process, no Redis. `api`: a scale-out API node. `worker`: a scale-out engine
   * worker. The last two need REDIS_URL. @default 'all'
   */
  role?: string;
  /** `onnx` (ONNX Runtime worker) or `cuda` (the native engine); overrides ENGINE. @default ENGINE or 'onnx' */
  engine?: string;
}

/** A checked role and the server configuration it runs with. */
export interface ServeSettings {
  role: 'all' | 'api' | 'worker';
  config: ServerConfig;
}

/** Checks `options` and reads `env` (`process.env` in the CLI). @throws ConfigError naming the bad setting */
export function serveSettings(options: ServeOptions, env: NodeJS.ProcessEnv): ServeSettings {
  const role = options.role ?? 'all';
  if (role !== 'all' && role !== 'api' && role !== 'worker')
    throw new ConfigError('--role', `"${role}" is not supported; use all, api or worker`);
  if (options.engine && options.engine !== 'onnx' && options.engine !== 'cuda') {
    throw new ConfigError('--engine', `"${options.engine}" is not supported; use onnx or cuda`);
  }
  const config = loadConfig(env, options.engine ? { engine: options.engine as 'onnx' | 'cuda' } : {});
  if (role !== 'worker' && config.authRequired && !config.authToken)
    throw new ConfigError(
      'AUTH_TOKEN',
      'required (AUTH_REQUIRED=1): set a secret token, or AUTH_REQUIRED=0 to serve an open API',
    );
  return { role, config };
}
