/**
 * @file The origin absolute URLs (image links) are built on: PUBLIC_URL when set, else the request's own
 * `X-Forwarded-Proto` (first hop) and `Host`.
 */
import type { IncomingMessage } from 'node:http';

/** `proto://host` of the request as the client reached it, or `publicUrl` when configured. */
export function originOf(req: IncomingMessage, publicUrl?: string): string {
  if (publicUrl) return publicUrl;
  const proto = (req.headers['x-forwarded-proto'] as string | undefined)?.split(',')[0] ?? 'http';
  return `${proto}://${req.headers.host ?? 'localhost'}`;
}
