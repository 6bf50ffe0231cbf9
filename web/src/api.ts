/**
 * @file Transport for the page: queries and mutations as GraphQL-over-HTTP POSTs, subscriptions over graphql-ws
 * on the same `/graphql` path (the server speaks both there). Documents come typed from codegen, so results and
 * variables are checked against the schema at build time.
 */
import { type Client, createClient } from 'graphql-ws';
import type { TypedDocumentString } from './gql/graphql.ts';

const GRAPHQL_PATH = '/graphql';
const TOKEN_KEY = 'fluxql.token';

/** The bearer token for servers started with AUTH_TOKEN (kept in localStorage; empty when none). */
export function getToken(): string {
  return localStorage.getItem(TOKEN_KEY) ?? '';
}

/** Stores the token and drops the WebSocket so the next subscription reconnects with it. */
export function setToken(token: string): void {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  void wsClient?.dispose();
  wsClient = undefined;
}

/** A transport-level failure (HTTP status, GraphQL `errors`), as opposed to typed errors returned as data. */
export class RequestError extends Error {
  override name = 'RequestError';
}

/** Runs a query or mutation and returns `data`; throws {@link RequestError} when there is none. */
export async function request<TResult, TVars>(
  doc: TypedDocumentString<TResult, TVars>,
  variables: TVars,
): Promise<TResult> {
  const token = getToken();
  const res = await fetch(GRAPHQL_PATH, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query: doc.toString(), variables }),
  });
  if (res.status === 401) throw new RequestError('The server needs an API token (see "Connection").');
  const body = (await res.json().catch(() => ({}))) as { data?: TResult; errors?: { message: string }[] };
  if (body.errors?.length) throw new RequestError(body.errors.map((e) => e.message).join('; '));
  if (!body.data) throw new RequestError(`Request failed (HTTP ${res.status})`);
  return body.data;
}

let wsClient: Client | undefined;

function ws(): Client {
  // One connection for the page, opened eagerly (at load) so that following a new job costs one message and its
  // first step events are not missed behind a handshake (they would still be summed up by the snapshot).
  wsClient ??= createClient({
    url: new URL(GRAPHQL_PATH, location.href).href.replace(/^http/, 'ws'),
    lazy: false,
    connectionParams: () => {
      const token = getToken();
      return token ? { authorization: `Bearer ${token}` } : {};
    },
  });
  return wsClient;
}

/** Handlers of {@link subscribe}. */
export interface SubscriptionHandlers<TResult> {
  next(data: TResult): void;
  error(message: string): void;
  complete(): void;
}

/** Opens the WebSocket now (see {@link ws}). */
export function connect(): void {
  ws();
}

/** Starts a subscription; returns a function that stops it. */
export function subscribe<TResult, TVars extends Record<string, unknown>>(
  doc: TypedDocumentString<TResult, TVars>,
  variables: TVars,
  handlers: SubscriptionHandlers<TResult>,
): () => void {
  return ws().subscribe<TResult>(
    { query: doc.toString(), variables },
    {
      next: (result) => {
        if (result.errors?.length) handlers.error(result.errors.map((e) => e.message).join('; '));
        else if (result.data) handlers.next(result.data);
      },
      error: (err) => handlers.error(describeWsError(err)),
      complete: handlers.complete,
    },
  );
}

function describeWsError(err: unknown): string {
  if (Array.isArray(err)) return err.map((e: { message?: string }) => e.message ?? String(e)).join('; ');
  if (err instanceof Error) return err.message;
  // A CloseEvent: 4403 is graphql-ws's "Forbidden" (missing or wrong token).
  const code = (err as { code?: number }).code;
  return code === 4403 ? 'The server needs an API token (see "Connection").' : `Connection lost (${code ?? 'unknown'})`;
}
