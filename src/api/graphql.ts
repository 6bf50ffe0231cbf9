/**
 * @file GraphQL transports: graphql-yoga for HTTP (queries, mutations, GraphiQL, subscriptions over SSE) and
 * graphql-ws on the same HTTP server and path for WebSocket subscriptions, wired as yoga's graphql-ws example
 * does (`getEnveloped` per operation, so both transports share plugins, context and masking).
 */
import type { IncomingMessage, Server } from 'node:http';
import { renderGraphiQL } from '@graphql-yoga/render-graphiql';
import type { ExecutionArgs, GraphQLError } from 'graphql';
import type { OperationResult } from 'graphql-ws';
import { useServer } from 'graphql-ws/use/ws';
import { createGraphQLError, createYoga, maskError, type YogaServerInstance } from 'graphql-yoga';
import { WebSocketServer } from 'ws';
import { type GenerationService, ServiceUnavailableError } from '../service/index.ts';
import { isAuthorizedBearer } from './auth.ts';
import type { ApiContext } from './builder.ts';
import { originOf } from './origin.ts';
import { schema } from './schema/index.ts';

/** Path of the GraphQL endpoint (HTTP, SSE, WebSocket) and of GraphiQL. */
export const GRAPHQL_PATH = '/graphql';

/** Options shared by both transports. */
export interface GraphqlOptions {
  service: GenerationService;
  /** Fixed origin for image URLs; otherwise taken from the request's Host. */
  publicUrl?: string;
  /** When set, WebSocket clients must send `{ authorization: 'Bearer <token>' }` in `connection_init`. */
  authToken?: string;
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
    context: ({ request }: { request?: Request }) => ({
      service: options.service,
      baseUrl: options.publicUrl ?? (request ? new URL(request.url).origin : 'http://localhost'),
    }),
  });
}

/** The `Authorization` a WebSocket client sent, from `connection_init` params or the upgrade request. */
function authorizationOf(params: Readonly<Record<string, unknown>> | undefined, req: IncomingMessage): unknown {
  return params?.authorization ?? params?.Authorization ?? req.headers.authorization;
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
  const wss = new WebSocketServer({ server, path: GRAPHQL_PATH });
  const disposable = useServer(
    {
      // The enveloped execute/subscribe travel in rootValue (yoga's graphql-ws example does the same).
      execute: (args: ExecutionArgs) => (args.rootValue as EnvelopedRoot).execute(args),
      subscribe: (args: ExecutionArgs) => (args.rootValue as EnvelopedRoot).subscribe(args),
      // Returning false closes with 4403 Forbidden, as the protocol prescribes for failed auth.
      onConnect: (ctx) =>
        isAuthorizedBearer(authorizationOf(ctx.connectionParams, ctx.extra.request), options.authToken, true),
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
          // A syntax error from yoga's parser (possibly another graphql realm, so no instanceof check).
          return [err as GraphQLError];
        }
        const errors = validate(schema, document);
        if (errors.length > 0) return errors;
        const base = await contextFactory();
        const contextValue: ApiContext = {
          ...base,
          service: options.service,
          baseUrl: originOf(ctx.extra.request, options.publicUrl),
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
    await disposable.dispose();
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  };
}

interface EnvelopedRoot {
  execute: (args: ExecutionArgs) => OperationResult;
  subscribe: (args: ExecutionArgs) => OperationResult;
}
