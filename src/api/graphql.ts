/**
 * @file GraphQL transports: graphql-yoga for HTTP (queries, mutations, GraphiQL, subscriptions over SSE) and
 * graphql-ws on the same HTTP server and path for WebSocket subscriptions, wired as yoga's graphql-ws example
 * does (`getEnveloped` per operation, so both transports share plugins, context and masking).
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { renderGraphiQL } from '@graphql-yoga/render-graphiql';
import type { ExecutionArgs, GraphQLError } from 'graphql';
import type { OperationResult } from 'graphql-ws';
import { useServer } from 'graphql-ws/use/ws';
import { createGraphQLError, createYoga, maskError, type YogaServerInstance } from 'graphql-yoga';
import { WebSocketServer } from 'ws';
import { type Caller, type GenerationService, ServiceUnavailableError } from '../service/index.ts';
import { type Authenticator, bearerToken, callerOf, setCaller } from './auth.ts';
import type { ApiContext } from './builder.ts';
import { DEFAULT_DOCUMENT_LIMITS, type DocumentLimits, documentLimitPlugins } from './limits.ts';
import { originOf } from './origin.ts';
import { schema } from './schema/index.ts';

/** Path of the GraphQL endpoint (HTTP, SSE, WebSocket) and of GraphiQL. */
export const GRAPHQL_PATH = '/graphql';

/** Options shared by both transports. */
export interface GraphqlOptions {
  service: GenerationService;
  /** Fixed origin for image URLs; otherwise taken from the request's Host. */
  publicUrl?: string;
  /**
   * API keys. When on, WebSocket clients authenticate on the upgrade (an `Authorization` header or a `token` query
   * parameter) or else in `connection_init` (`{ authorization: 'Bearer <token>' }`).
   */
  auth: Authenticator;
  /** Depth, alias, token, cost, directive and `generateImage` limits. @default {@link DEFAULT_DOCUMENT_LIMITS} */
  limits?: DocumentLimits;
  /** Largest WebSocket message (WS_MAX_PAYLOAD): bigger frames close the socket (1009) before being buffered. */
  wsMaxPayload?: number;
}

let graphiqlPage: string | undefined;

/** The yoga instance (a Node request listener). */
export function createGraphqlHandler(options: GraphqlOptions): YogaServerInstance<Record<string, unknown>, ApiContext> {
  return createYoga<Record<string, unknown>, ApiContext>({
    schema,
    graphqlEndpoint: GRAPHQL_PATH,
    graphiql: { title: 'fluxql', subscriptionsProtocol: 'WS' },
    // GraphiQL from the package (scripts, styles and editor workers inlined in one page), not yoga's default page
    // that loads them from a CDN: it works with no network. The options never change, so the page (about 9 MB)
    // is rendered once.
    renderGraphiQL: (opts) => {
      graphiqlPage ??= renderGraphiQL(opts);
      return graphiqlPage;
    },
    landingPage: false,
    // CORS is answered by the router for every route (rest/cors.ts), before authentication.
    cors: false,
    plugins: documentLimitPlugins(options.limits ?? DEFAULT_DOCUMENT_LIMITS),
    // Unexpected errors are masked; typed failures travel as data, never as thrown errors. A down dependency
    // (scale-out: Redis) is not a bug: fields without an error union say so in clear, with a stable code.
    maskedErrors: {
      maskError: (error, message) => {
        const original = (error as { originalError?: unknown }).originalError;
        if (original instanceof ServiceUnavailableError) {
          return createGraphQLError(original.message, {
            ...((error as GraphQLError).path ? { path: (error as GraphQLError).path } : {}),
            extensions: { code: 'UNAVAILABLE', retryAfterSeconds: original.retryAfterSeconds },
          });
        }
        return maskError(error, message);
      },
    },
    // Over graphql-ws there is no Fetch `request`; `attachGraphqlWs` sets baseUrl from the upgrade request.
    context: ({ request, req }: { request?: Request; req?: IncomingMessage }) =>
      apiContext(
        options,
        options.publicUrl ?? (request ? new URL(request.url).origin : 'http://localhost'),
        callerOf(req),
      ),
  });
}

function apiContext(options: GraphqlOptions, baseUrl: string, caller: Caller | undefined): ApiContext {
  return {
    service: options.service,
    baseUrl,
    ...(caller ? { caller } : {}),
    urlOf: (path) => `${baseUrl}${options.auth.signPath(path)}`,
  };
}

/** The token a WebSocket upgrade carries: the `Authorization` header, else a `token` query parameter (browsers). */
function upgradeToken(req: IncomingMessage): string | undefined {
  const header = bearerToken(req.headers.authorization);
  if (header) return header;
  const query = new URL(req.url ?? '/', 'http://localhost').searchParams.get('token');
  return query || undefined;
}

/** Refuses an upgrade with a plain HTTP status before any WebSocket frame is read. */
function refuseUpgrade(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  socket.destroy();
}

/**
 * Serves graphql-ws on `server` at {@link GRAPHQL_PATH}. Returns a dispose that closes every socket
 * (code 1001) and the WebSocket server.
 */
export function attachGraphqlWs(
  server: Server,
  yoga: YogaServerInstance<Record<string, unknown>, ApiContext>,
  options: GraphqlOptions,
): () => Promise<void> {
  // No `server` option: upgrades are checked here first (path, then a token given on the upgrade), so a wrong
  // token costs one HTTP reply, never a buffered message. Every message is capped by maxPayload.
  const wss = new WebSocketServer({ noServer: true, maxPayload: options.wsMaxPayload ?? 64 * 1024 });
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    if (new URL(req.url ?? '/', 'http://localhost').pathname !== GRAPHQL_PATH) {
      return refuseUpgrade(socket, 404, 'Not Found');
    }
    const token = upgradeToken(req);
    if (token !== undefined || !options.auth.enabled) {
      const result = options.auth.authenticate(token);
      if (!result.ok) return refuseUpgrade(socket, 401, 'Unauthorized');
      setCaller(req, result.caller);
      upgraded.add(req);
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  };
  /** Upgrade requests already authenticated (or needing no key): `connection_init` needs no token then. */
  const upgraded = new WeakSet<IncomingMessage>();
  server.on('upgrade', onUpgrade);
  const disposable = useServer(
    {
      // The enveloped execute/subscribe travel in rootValue (yoga's graphql-ws example does the same).
      execute: (args: ExecutionArgs) => (args.rootValue as EnvelopedRoot).execute(args),
      subscribe: (args: ExecutionArgs) => (args.rootValue as EnvelopedRoot).subscribe(args),
      // Returning false closes with 4403 Forbidden, as the protocol prescribes for failed auth.
      onConnect: (ctx) => {
        const req = ctx.extra.request;
        if (upgraded.has(req)) return true;
        const params = ctx.connectionParams;
        const result = options.auth.authenticate(bearerToken(params?.authorization ?? params?.Authorization));
        if (!result.ok) return false;
        setCaller(req, result.caller);
        return true;
      },
      onSubscribe: async (ctx, _id, payload) => {
        const { schema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          req: ctx.extra.request,
          socket: ctx.extra.socket,
          params: payload,
        });
        let document: ReturnType<typeof parse>;
        try {
          document = parse(payload.query);
        } catch (err) {
          // A syntax error from yoga's parser, or a refused document (token limit).
          return [sameRealm(err as GraphQLError)];
        }
        let errors: readonly GraphQLError[];
        try {
          errors = validate(schema, document);
        } catch (err) {
          // graphql-armor's rules throw the error of a refused document.
          return [sameRealm(err as GraphQLError)];
        }
        if (errors.length > 0) return errors.map(sameRealm);
        const base = await contextFactory();
        const contextValue: ApiContext = {
          ...base,
          ...apiContext(options, originOf(ctx.extra.request, options.publicUrl), callerOf(ctx.extra.request)),
        };
        return {
          schema,
          operationName: payload.operationName,
          document,
          variableValues: payload.variables,
          contextValue,
          rootValue: { execute, subscribe } as EnvelopedRoot,
        };
      },
    },
    wss,
  );
  return async () => {
    server.off('upgrade', onUpgrade);
    await disposable.dispose();
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  };
}

/**
 * The error rebuilt by yoga's helper: graphql-ws accepts only errors that are `instanceof` its GraphQLError, and
 * CommonJS plugins (graphql-armor) may create theirs from another copy of graphql. The HTTP-only `http` extension
 * is dropped.
 */
function sameRealm(err: GraphQLError): GraphQLError {
  const { http: _http, ...extensions } = (err.extensions ?? {}) as Record<string, unknown>;
  return createGraphQLError(err.message, {
    ...(err.nodes ? { nodes: err.nodes } : {}),
    ...(err.source ? { source: err.source } : {}),
    ...(err.positions ? { positions: err.positions } : {}),
    extensions,
  });
}

interface EnvelopedRoot {
  execute: (args: ExecutionArgs) => OperationResult;
  subscribe: (args: ExecutionArgs) => OperationResult;
}
