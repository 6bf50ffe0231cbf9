/**
 * @file Public surface of the API layer (GraphQL over HTTP/SSE/WebSocket, REST, files, health, metrics). This is
 * the only layer that imports GraphQL libraries; it reaches the engine only through `service/`.
 */

export { Authenticator, type KeyEntry } from './auth.ts';
export { GRAPHQL_PATH } from './graphql.ts';
export { DEFAULT_DOCUMENT_LIMITS, type DocumentLimits } from './limits.ts';
export { type AppOptions, buildApp, type RunningApp } from './server.ts';
