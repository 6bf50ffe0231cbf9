/**
 * @file The bearer-token check of every transport (REST, GraphQL over HTTP, graphql-ws): one parser of
 * `Authorization: Bearer <token>`, so the routes cannot drift apart in what they accept.
 */

/**
 * The token of an `Authorization` value: `Bearer <token>` (scheme case-insensitive) → `<token>`, trimmed. A value
 * without the scheme is no token, unless `bareAllowed` (graphql-ws `connection_init` params, where clients often
 * send the token alone).
 */
export function bearerToken(value: unknown, bareAllowed = false): string | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /^Bearer\s+(.+)$/i.exec(value);
  if (m) return m[1]!.trim();
  return bareAllowed ? value.trim() : undefined;
}

/** Whether `value` carries the configured token (always true when none is configured). */
export function isAuthorizedBearer(value: unknown, token: string | undefined, bareAllowed = false): boolean {
  return !token || bearerToken(value, bareAllowed) === token;
}
