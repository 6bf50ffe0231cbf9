/**
 * @file Scale-out mode over Redis (BullMQ jobs, Redis records, Redis pub/sub events): the API node's backend and
 * the worker. Loaded only by the `api` and `worker` roles, so single-process mode never touches Redis.
 */
export { createRedisApiBackend, type RedisApiOptions } from './api-backend.ts';
export type { RedisSettings } from './connection.ts';
export { type RedisWorkerOptions, type RunningWorker, startRedisWorker } from './worker-node.ts';
