/**
 * @file Job events over Redis pub/sub, one channel per job: what a worker publishes reaches subscribers on every
 * API node.
 *
 * NOTE(scale-out): why not `@graphql-yoga/redis-event-target`. It is the same idea (a channel per topic, JSON
 * payloads), but its `subscribe` is fire-and-forget, so an event published between "subscribe" and "read the
 * snapshot" could be lost; here `subscribe` resolves once Redis confirmed the subscription. It also lives in a
 * GraphQL package, while the REST endpoint and the service layer need the events too.
 */
import type { Redis } from 'ioredis';
import type { JobEvent } from '../job-events.ts';
import type { JobEventBus } from '../ports.ts';
import { decodeEvent } from './codec.ts';
import { createRedis, type RedisKeys, unavailable } from './connection.ts';

interface Listener {
  onEvent: (e: JobEvent) => void;
  onResync: (() => void) | undefined;
}

/** Subscriber side of the job events (API nodes). Publishing happens in the worker, next to the record write. */
export class RedisEventBus implements JobEventBus {
  readonly #sub: Redis;
  readonly #listeners = new Map<string, Set<Listener>>();
  readonly #subscribing = new Map<string, Promise<unknown>>();
  #lost = false;

  constructor(
    private readonly url: string,
    private readonly keys: RedisKeys,
    onError: (err: Error) => void,
  ) {
    this.#sub = createRedis(url, { subscriber: true, onError });
    this.#sub.on('message', (channel: string, message: string) => {
      const set = this.#listeners.get(channel);
      const event = set ? decodeEvent(message) : undefined;
      if (!set || !event) return;
      for (const l of [...set]) l.onEvent(event);
    });
    this.#sub.on('close', () => {
      this.#lost = true;
    });
    // ioredis resubscribes by itself after a reconnect; events published meanwhile are gone, so listeners re-read.
    this.#sub.on('ready', () => {
      if (!this.#lost) return;
      this.#lost = false;
      for (const set of this.#listeners.values()) for (const l of [...set]) l.onResync?.();
    });
  }

  async subscribe(jobId: string, onEvent: (e: JobEvent) => void, onResync?: () => void): Promise<() => void> {
    if (this.#sub.status !== 'ready') throw unavailable(this.url, new Error(`connection is ${this.#sub.status}`));
    const channel = this.keys.events(jobId);
    const listener: Listener = { onEvent, onResync };
    let set = this.#listeners.get(channel);
    if (!set) {
      set = new Set();
      this.#listeners.set(channel, set);
      this.#subscribing.set(channel, this.#sub.subscribe(channel));
    }
    set.add(listener);
    try {
      await this.#subscribing.get(channel);
    } catch (err) {
      this.#remove(channel, listener);
      throw unavailable(this.url, err);
    }
    return () => this.#remove(channel, listener);
  }

  /** Closes the subscriber connection. */
  close(): void {
    this.#sub.disconnect();
  }

  #remove(channel: string, listener: Listener): void {
    const set = this.#listeners.get(channel);
    if (!set?.delete(listener) || set.size > 0) return;
    this.#listeners.delete(channel);
    this.#subscribing.delete(channel);
    this.#sub.unsubscribe(channel).catch(() => {});
  }
}
