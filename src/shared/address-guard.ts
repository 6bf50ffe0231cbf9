/**
 * @file The address guard against server-side request forgery, shared by every outbound fetch whose URL comes
 * from a client (control images, webhooks): {@link isPublicAddress} tells public addresses from loopback, private,
 * link-local, CGNAT, unique-local and other non-public ones, and {@link guardedLookup} is a `dns.lookup` for
 * `http.request` that fails when any address of a name is non-public, so the socket connects only to checked
 * addresses (no second lookup, so no DNS-rebinding window). Literal IPs are not looked up: callers check them with
 * {@link isPublicAddress}.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

/** A host refused by the address guard. */
export class ForbiddenAddressError extends Error {
  constructor(readonly how: 'is' | 'resolves to') {
    super(`the host ${how} a non-public address`);
  }
}

/**
 * `dns.lookup`, but failing when any address of the name is non-public. The socket connects to what this returns,
 * so the checked addresses are the ones used.
 */
export const guardedLookup: LookupFunction = (hostname, options, callback) => {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    const list = addresses as unknown as LookupAddress[];
    if (err) return callback(err, '', 0);
    if (list.length === 0 || list.some((a) => !isPublicAddress(a.address))) {
      return callback(new ForbiddenAddressError('resolves to') as NodeJS.ErrnoException, '', 0);
    }
    if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
    const first = list[0]!;
    callback(null, first.address, first.family);
  });
};

/** Non-public ranges: IANA special-purpose registries, the ones reachable from inside a network or host. */
const NON_PUBLIC = (() => {
  const b = new BlockList();
  for (const [net, bits] of [
    ['0.0.0.0', 8], // "this" network
    ['10.0.0.0', 8], // private
    ['100.64.0.0', 10], // CGNAT shared space
    ['127.0.0.0', 8], // loopback
    ['169.254.0.0', 16], // link-local (cloud metadata services)
    ['172.16.0.0', 12], // private
    ['192.0.0.0', 24], // IETF protocol assignments
    ['192.0.2.0', 24], // documentation
    ['192.168.0.0', 16], // private
    ['198.18.0.0', 15], // benchmarking
    ['198.51.100.0', 24], // documentation
    ['203.0.113.0', 24], // documentation
    ['224.0.0.0', 4], // multicast
    ['240.0.0.0', 4], // reserved, broadcast
  ] as const) {
    b.addSubnet(net, bits, 'ipv4');
  }
  for (const [net, bits] of [
    ['::', 128], // unspecified
    ['::1', 128], // loopback
    ['::', 96], // IPv4-compatible (deprecated)
    ['100::', 64], // discard
    ['2001:db8::', 32], // documentation
    ['fc00::', 7], // unique local
    ['fe80::', 10], // link-local
    ['fec0::', 10], // site-local (deprecated)
    ['ff00::', 8], // multicast
  ] as const) {
    b.addSubnet(net, bits, 'ipv6');
  }
  return b;
})();

/**
 * Whether an IP address is public: not loopback, private (10/8, 172.16/12, 192.168/16), CGNAT (100.64/10),
 * link-local, unique-local, multicast, documentation or otherwise reserved. IPv4 addresses embedded in IPv6
 * (`::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by their IPv4 part. Non-IPs are not public.
 */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return !NON_PUBLIC.check(address, 'ipv4');
  if (family !== 6) return false;
  // BlockList checks `::ffff:a.b.c.d` against the IPv4 rules itself.
  if (NON_PUBLIC.check(address, 'ipv6')) return false;
  const groups = ipv6Groups(address);
  if (!groups) return false;
  const v4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  if (groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every((g) => g === 0)) {
    return isPublicAddress(v4(groups[6]!, groups[7]!));
  }
  if (groups[0] === 0x2002) return isPublicAddress(v4(groups[1]!, groups[2]!));
  return true;
}

/** The eight 16-bit groups of an IPv6 address (zone and embedded IPv4 handled); undefined if malformed. */
function ipv6Groups(address: string): number[] | undefined {
  let text = address.replace(/%.*$/, '');
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const parse = (s: string) => (s === '' ? [] : s.split(':').map((g) => Number.parseInt(g, 16)));
  const h = parse(head);
  const t = tail === undefined ? [] : parse(tail);
  const fill = tail === undefined ? 0 : 8 - h.length - t.length;
  const groups = [...h, ...new Array<number>(Math.max(0, fill)).fill(0), ...t];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}
