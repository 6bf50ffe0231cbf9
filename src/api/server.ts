/**
 * @file The HTTP server: one Node `http.Server` routing `/graphql` (yoga: HTTP, SSE, GraphiQL; graphql-ws on
 * upgrade), the REST routes, image files, health and metrics. `buildApp` returns `{ start, stop }` in the manner
 * of yoga's graphql-ws example; `stop` closes sockets so tests and SIGTERM end cleanly.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import type { GenerationService } from '../service/index.ts';
import { attachGraphqlWs, createGraphqlHandler, GRAPHQL_PATH } from './graphql.ts';
import { originOf } from './origin.ts';
import { handleImageFile, IMAGES_PREFIX } from './rest/files.ts';
import { HttpError, isAuthorized, sendError, sendJson, unauthorized } from './rest/http.ts';
import { handleImageGeneration, handleListModels, toHttpError } from './rest/images.ts';
import { handleQueueRoute, QUEUE_PREFIX } from './rest/queue.ts';
import { handleWebAsset } from './rest/web.ts';
import { WebhookDispatcher, type WebhookSettings } from './rest/webhooks.ts';

/** What the API needs. */
export interface AppOptions {
  service: GenerationService;
  /** Bearer token required on `/v1/*` and GraphQL operations when set. */
  authToken?: string;
  /** Fixed origin for absolute image URLs. */
  publicUrl?: string;
  /** The process's logger (`src/log.ts`); each request logs through a child carrying its request id. */
  logger: Logger;
  /** Queue-API webhooks (signing key, SSRF guard, retries). */
  webhooks?: WebhookSettings;
}

/** A started server. */
export interface RunningApp {
  /** `http://host:port` as reachable from this machine. */
  url: string;
  port: number;
  stop(): Promise<void>;
}

function withJobId(res: ServerResponse, val: Record<string, unknown>): Record<string, unknown> {
  const jobId = res.getHeader('x-job-id');
  return typeof jobId === 'string' ? { ...val, jobId } : val;
}

/** Builds the HTTP server (not listening yet). */
export function buildApp(options: AppOptions) {
  const { service, logger } = options;
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

    if (path === GRAPHQL_PATH) {
      // GraphiQL's HTML page is public; operations need the token like REST does.
      const wantsHtml = method === 'GET' && (req.headers.accept ?? '').includes('text/html');
      if (!wantsHtml && !isAuthorized(req, options.authToken)) throw unauthorized();
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
      const text = await service.metrics.registry.metrics();
      res.writeHead(200, { 'content-type': service.metrics.registry.contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (path.startsWith(IMAGES_PREFIX) && (method === 'GET' || method === 'HEAD')) {
      await handleImageFile(req, res, service, path);
      return;
    }
    if (path.startsWith(QUEUE_PREFIX)) {
      if (!isAuthorized(req, options.authToken)) throw unauthorized();
      return handleQueueRoute(req, res, { service, webhooks, baseUrl: originOf(req, options.publicUrl), log });
    }
    if (path === '/v1/images/generations' || path === '/v1/models') {
      if (!isAuthorized(req, options.authToken)) throw unauthorized();
      if (path === '/v1/models' && method === 'GET') return handleListModels(res, service);
      if (path === '/v1/images/generations' && method === 'POST') {
        return handleImageGeneration(req, res, service, originOf(req, options.publicUrl));
      }
      throw new HttpError(405, `${method} not allowed on ${path}`, 'invalid_request_error', 'method_not_allowed');
    }
    // The web page (public, like GraphiQL's HTML): `/` and the built files; anything else is a 404.
    if ((method === 'GET' || method === 'HEAD') && (await handleWebAsset(req, res, path))) return;
    throw new HttpError(404, `No route ${method} ${path}`, 'invalid_request_error', 'not_found');
  };

  const server = createServer((req, res) => {
    httpLog(req, res);
    route(req, res, req.log).catch((err: unknown) => {
      const httpErr = toHttpError(err);
      if (httpErr.status === 401) service.countError({ code: 'unauthorized' });
      // Unknown errors are logged here and masked in the reply; the server keeps serving.
      if (!(err instanceof HttpError) && httpErr.status === 500) req.log.error({ err }, 'request failed');
      sendError(res, httpErr);
    });
  });
  // Long generations: never let Node's request timeout cut a waiting REST client.
  server.requestTimeout = 0;
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
            stop: async () => {
              await disposeWs();
              await webhooks.close();
              server.closeAllConnections();
              await new Promise<void>((r) => server.close(() => r()));
            },
          });
        });
      });
    },
  };
}
