/**
 * @file The HTTP server: one Node `http.Server` routing `/graphql` (yoga: HTTP, SSE, GraphiQL; graphql-ws on
 * upgrade), the REST routes, image files, health and metrics. `buildApp` returns `{ start, stop }` in the manner
 * of yoga's graphql-ws example; `stop` closes sockets so tests and SIGTERM end cleanly.
 *
 * Edge rules, in order: CORS preflights are answered without authentication; the caller is authenticated from
 * the header before any body is read; bodies are bounded; while the service drains (SIGTERM) new generations get
 * 503 with `Retry-After`.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import type { GenerationService } from '../service/index.ts';
import { type Authenticator, requestToken, safeEqual, setCaller } from './auth.ts';
import { attachGraphqlWs, createGraphqlHandler, GRAPHQL_PATH } from './graphql.ts';
import type { DocumentLimits } from './limits.ts';
import { originOf } from './origin.ts';
import { answerPreflight, applyCors, isPreflight } from './rest/cors.ts';
import { handleImageFile, IMAGES_PREFIX } from './rest/files.ts';
import { HttpError, readBody, sendError, sendJson, unauthorized } from './rest/http.ts';
import { handleImageGeneration, handleListModels, MAX_BODY_BYTES, toHttpError } from './rest/images.ts';
import { handleQueueRoute, QUEUE_PREFIX } from './rest/queue.ts';
import { handleWebAsset } from './rest/web.ts';
import { WebhookDispatcher, type WebhookSettings } from './rest/webhooks.ts';

/** What the API needs. */
export interface AppOptions {
  service: GenerationService;
  /** API keys (and AUTH_TOKEN as an admin key); with none, every request is allowed. */
  auth: Authenticator;
  /** Fixed origin for absolute image URLs. */
  publicUrl?: string;
  /** The process's logger (`src/log.ts`); each request logs through a child carrying its request id. */
  logger: Logger;
  /** Queue-API webhooks (signing key, SSRF guard, retries). */
  webhooks?: WebhookSettings;
  /** When set, `/metrics` needs this bearer token (METRICS_TOKEN). */
  metricsToken?: string;
  /** CORS allow-list (CORS_ORIGINS); unset: any origin, without credentials. */
  corsOrigins?: readonly string[];
  /** GraphQL document limits. */
  limits?: DocumentLimits;
  /** Largest WebSocket message. @default 64 KiB */
  wsMaxPayload?: number;
  /** Time to receive a whole request, ms (not the reply: REST waits for its job after that). @default 60 000 */
  requestTimeoutMs?: number;
  /** Time to receive the headers, ms. @default 20 000 */
  headersTimeoutMs?: number;
}

/** A started server. */
export interface RunningApp {
  /** `http://host:port` as reachable from this machine. */
  url: string;
  port: number;
  /**
   * Stops listening and closes WebSockets; requests under way get up to `graceMs` to finish (a REST reply being
   * written after its job ended), then every connection is closed.
   */
  stop(graceMs?: number): Promise<void>;
}

function withJobId(res: ServerResponse, val: Record<string, unknown>): Record<string, unknown> {
  const jobId = res.getHeader('x-job-id');
  return typeof jobId === 'string' ? { ...val, jobId } : val;
}

/** REST bodies must be JSON (a form post from another site must not reach the service). */
function requireJson(req: IncomingMessage): void {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (type !== 'application/json' && !/^application\/[\w.+-]+\+json$/.test(type)) {
    throw new HttpError(
      415,
      `Content-Type must be application/json, got ${JSON.stringify(req.headers['content-type'] ?? '')}`,
      'invalid_request_error',
      'unsupported_media_type',
    );
  }
}

function draining(): HttpError {
  return new HttpError(
    503,
    'The server is shutting down and accepts no new jobs; retry on another instance',
    'server_error',
    'unavailable',
    null,
    { 'retry-after': '5' },
  );
}

/** Builds the HTTP server (not listening yet). */
export function buildApp(options: AppOptions) {
  const { service, logger, auth } = options;
  const yoga = createGraphqlHandler(options);
  const webhooks = new WebhookDispatcher(options.webhooks ?? {}, logger);
  // One line per finished request, with its id: the client's X-Request-Id when it is a sane token, else a new
  // UUID; echoed in the response either way so clients and logs can be matched.
  const httpLog = pinoHttp({
    logger,
    genReqId: (req, res) => {
      const given = req.headers['x-request-id'];
      const id = typeof given === 'string' && /^[\w.:@-]{1,128}$/.test(given) ? given : randomUUID();
      res.setHeader('x-request-id', id);
      return id;
    },
    // Probes and scrapes every few seconds would drown the rest.
    autoLogging: { ignore: (req) => ['/healthz', '/readyz', '/metrics'].includes(req.url ?? '') },
    customLogLevel: (_req, res, err) => (err || res.statusCode >= 500 ? 'error' : 'info'),
    // The job a generation request made (REST sets X-Job-Id), so a request id leads to the job's own lines.
    customSuccessObject: (_req, res, val: Record<string, unknown>) => withJobId(res, val),
    customErrorObject: (_req, res, _err, val: Record<string, unknown>) => withJobId(res, val),
    quietReqLogger: true,
  });

  const route = async (req: IncomingMessage, res: ServerResponse, log: Logger): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const method = req.method ?? 'GET';

    if (isPreflight(req)) return answerPreflight(req, res, options.corsOrigins);
    applyCors(req, res, options.corsOrigins);

    if (path === GRAPHQL_PATH) {
      // GraphiQL's HTML page is public; operations need a key like REST does.
      const wantsHtml = method === 'GET' && (req.headers.accept ?? '').includes('text/html');
      if (!wantsHtml) {
        const result = auth.authenticateRequest(req);
        if (!result.ok) throw unauthorized();
        setCaller(req, result.caller);
      }
      if (method === 'POST') {
        // Read (bounded) here, after the key check; yoga takes a pre-read body from `req.body`.
        (req as IncomingMessage & { body?: Buffer }).body = await readBody(req, MAX_BODY_BYTES);
      }
      await yoga.handle(req, res);
      return;
    }
    if (path === '/healthz') return sendJson(res, 200, { status: 'ok' });
    if (path === '/readyz') {
      // Scale-out adds why not (Redis down, no worker alive) and how many workers are alive.
      const { ready, ...detail } = service.health();
      return sendJson(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', ...detail });
    }
    if (path === '/metrics') {
      const token = requestToken(req);
      if (options.metricsToken && (token === undefined || !safeEqual(token, options.metricsToken))) {
        throw unauthorized();
      }
      const text = await service.metrics.registry.metrics();
      res.writeHead(200, { 'content-type': service.metrics.registry.contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (path.startsWith(IMAGES_PREFIX) && (method === 'GET' || method === 'HEAD')) {
      const result = auth.authenticateRequest(req);
      await handleImageFile(req, res, service, url, {
        auth,
        ...(result.ok && result.caller ? { caller: result.caller } : {}),
      });
      return;
    }
    if (path.startsWith(QUEUE_PREFIX)) {
      const result = auth.authenticateRequest(req);
      if (!result.ok) throw unauthorized();
      return handleQueueRoute(req, res, {
        service,
        webhooks,
        baseUrl: originOf(req, options.publicUrl),
        log,
        ...(result.caller ? { caller: result.caller } : {}),
        signPath: (p) => auth.signPath(p),
      });
    }
    if (path === '/v1/images/generations' || path === '/v1/images/edits' || path === '/v1/models') {
      const result = auth.authenticateRequest(req);
      if (!result.ok) throw unauthorized();
      if (path === '/v1/models' && method === 'GET') return handleListModels(res, service);
      if (path === '/v1/images/generations' && method === 'POST') {
        if (service.draining) throw draining();
        requireJson(req);
        return handleImageGeneration(req, res, {
          service,
          baseUrl: originOf(req, options.publicUrl),
          ...(result.caller ? { caller: result.caller } : {}),
          signPath: (p) => auth.signPath(p),
        });
      }
      if (path === '/v1/images/edits' && method === 'POST') {
        if (service.draining) throw draining();
        return handleImageGeneration(req, res, {
          service,
          baseUrl: originOf(req, options.publicUrl),
          ...(result.caller ? { caller: result.caller } : {}),
          signPath: (p) => auth.signPath(p),
          edits: true,
        });
      }
      throw new HttpError(405, `${method} not allowed on ${path}`, 'invalid_request_error', 'method_not_allowed');
    }
    // The web page (public, like GraphiQL's HTML): `/` and the built files; anything else is a 404.
    if ((method === 'GET' || method === 'HEAD') && (await handleWebAsset(req, res, path))) return;
    throw new HttpError(404, `No route ${method} ${path}`, 'invalid_request_error', 'not_found');
  };

  // Timeouts are checked every second (Node's default, 30 s, would let them run up to 30 s late).
  const server = createServer({ connectionsCheckingInterval: 1000 }, (req, res) => {
    httpLog(req, res);
    route(req, res, req.log).catch((err: unknown) => {
      const httpErr = toHttpError(err);
      if (httpErr.status === 401) service.countError({ code: 'unauthorized' });
      // Unknown errors are logged here and masked in the reply; the server keeps serving.
      if (!(err instanceof HttpError) && httpErr.status === 500) req.log.error({ err }, 'request failed');
      // A refused body need not be read to its end: the reply says the connection closes (so no client reuses
      // it), and it is closed once the reply is out.
      if (!req.complete && !res.headersSent) {
        res.setHeader('connection', 'close');
        res.once('finish', () => req.destroy());
      }
      sendError(res, httpErr);
    });
  });
  // These bound receiving the request (a slow-loris client), not the reply: a REST client waits for its job after
  // its request is complete, and SSE and WebSocket streams are not requests being received.
  server.requestTimeout = options.requestTimeoutMs ?? 60_000;
  server.headersTimeout = Math.min(options.headersTimeoutMs ?? 20_000, server.requestTimeout);
  const disposeWs = attachGraphqlWs(server, yoga, options);

  return {
    server,
    /** Listens; resolves with the URL. */
    start(port: number, host: string): Promise<RunningApp> {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          const addr = server.address() as AddressInfo;
          const shownHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
          const url = `http://${shownHost.includes(':') ? `[${shownHost}]` : shownHost}:${addr.port}`;
          resolve({
            url,
            port: addr.port,
            stop: async (graceMs = 0) => {
              const closed = new Promise<void>((r) => server.close(() => r()));
              server.closeIdleConnections();
              await disposeWs();
              await webhooks.close();
              if (graceMs > 0) {
                let timer: NodeJS.Timeout | undefined;
                await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
                clearTimeout(timer);
              }
              server.closeAllConnections();
              await closed;
            },
          });
        });
      });
    },
  };
}
