/**
 * @file The queue API beside the synchronous REST route, in fal's queue conventions:
 *
 * - `POST /v1/queue/images/generations` takes the body of `/v1/images/generations` (either dialect, plus an
 *   optional `webhook_url`), and `POST /v1/queue/images/edits` the body of `/v1/images/edits` (JSON, or OpenAI's
 *   multipart form with `webhook_url` as a field; an input image is required); both answer 202 `{request_id, status: "IN_QUEUE", queue_position, status_url,
 *   response_url, cancel_url}` at once. The request id is the job id (GraphQL's `job(id)` sees it too).
 * - `GET /v1/queue/requests/{id}/status`: `IN_QUEUE` (`queue_position`: requests ahead, 0 = next), `IN_PROGRESS`
 *   (`step`, `total_steps`), `COMPLETED`, or `FAILED` (`error: {code, message}`; a cancelled job is `FAILED` with code
 *   `canceled`).
 * - `GET /v1/queue/requests/{id}/status/stream`: the same bodies as Server-Sent Events at every change, until the end.
 * - `GET /v1/queue/requests/{id}` (the response URL): the OpenAI-shaped result once COMPLETED. Before that, as fal
 *   does, 400 with code `request_in_progress` ("Request is still in progress"; poll the status URL). A failed job
 *   answers what the synchronous route would have: 500 with the job's error code, 409 `canceled` for a cancelled one.
 *   `data` holds `b64_json` unless the submission asked for `response_format: "url"`; the response URL carries that
 *   choice in its query, so any API node (scale-out) answers it without state of its own.
 *   Results stay available while the job record does (the last 1000 finished jobs in one process, JOB_HISTORY_S in
 *   scale-out) and its images exist (410 `image_expired` after the image cleanup).
 * - `PUT` or `POST /v1/queue/requests/{id}/cancel`: 202 `{status: "CANCELLATION_REQUESTED"}` (queued: cancelled at
 *   once; running: at the next step boundary), 400 `{status: "ALREADY_COMPLETED"}` when it had ended.
 * - Webhooks (`webhooks.ts`): the API node that accepted the request waits for its end and POSTs the result once
 *   (retried only when an attempt fails). In scale-out mode that node follows the job over Redis like any
 *   subscriber; if it stops before the job ends, no webhook is sent (the result stays pollable).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Caller, GenerationService, Job } from '../../service/index.ts';
import { HttpError, sendJson } from './http.ts';
import { checkEditImage, openAiResult, type Parsed, parseRequest, readGenerationBody, toHttpError } from './images.ts';
import type { WebhookBody, WebhookDispatcher } from './webhooks.ts';

/** Prefix of every queue route. */
export const QUEUE_PREFIX = '/v1/queue/';
/** Submission routes: whether each is the edit route. */
const SUBMIT_PATHS: ReadonlyMap<string, boolean> = new Map([
  ['/v1/queue/images/generations', false],
  ['/v1/queue/images/edits', true],
]);
const REQUEST_PATH = /^\/v1\/queue\/requests\/([A-Za-z0-9-]{1,100})(\/status\/stream|\/status|\/cancel)?$/;

/** What the queue routes need. */
export interface QueueContext {
  service: GenerationService;
  webhooks: WebhookDispatcher;
  /** Origin of the URLs handed out (PUBLIC_URL or the request's Host). */
  baseUrl: string;
  /** The request's logger (carries its request id). */
  log: Logger;
  /** Who calls (API keys): jobs are made for and looked up as this caller; undefined without keys. */
  caller?: Caller;
  /** Signs image URL paths handed out (so `<img>` works with keys on). @default the path as is */
  signPath?: (path: string) => string;
}

/** Routes `/v1/queue/...`; errors are thrown as {@link HttpError} for the router to send. */
export async function handleQueueRoute(req: IncomingMessage, res: ServerResponse, c: QueueContext): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const method = req.method ?? 'GET';
  const edits = SUBMIT_PATHS.get(url.pathname);
  if (edits !== undefined) {
    if (method !== 'POST') throw methodNotAllowed(method, url.pathname);
    return submit(req, res, c, edits);
  }
  const m = REQUEST_PATH.exec(url.pathname);
  if (!m) throw new HttpError(404, `No route ${method} ${url.pathname}`, 'invalid_request_error', 'not_found');
  const id = m[1] as string;
  const tail = m[2];
  if (tail === '/cancel') {
    if (method !== 'PUT' && method !== 'POST') throw methodNotAllowed(method, url.pathname);
    return cancel(res, c, id);
  }
  if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, url.pathname);
  const job = await requireJob(c, id);
  if (tail === '/status') return sendJson(res, 200, await statusOf(job, c));
  if (tail === '/status/stream') return streamStatus(res, job, c);
  const format = url.searchParams.get('response_format') === 'url' ? 'url' : 'b64_json';
  return sendResult(res, job, c, format);
}

async function submit(req: IncomingMessage, res: ServerResponse, c: QueueContext, edits: boolean): Promise<void> {
  const { service } = c;
  const { body, multipart } = await readGenerationBody(req, edits).catch((err: HttpError) => {
    service.countError({ code: err.code });
    throw err;
  });
  let parsed: Parsed | undefined;
  let job: Job;
  try {
    if (edits) checkEditImage(body);
    parsed = parseRequest(req, body, multipart);
  } catch (err) {
    service.countError(err);
    throw toHttpError(err, body.size !== undefined);
  }
  const webhook =
    body.webhook_url === undefined || body.webhook_url === null
      ? undefined
      : await c.webhooks.validate(body.webhook_url).catch((err: HttpError) => {
          service.countError({ code: err.code });
          throw err;
        });
  try {
    job = await service.submit(parsed.input, c.caller ? { caller: c.caller } : {});
  } catch (err) {
    throw toHttpError(err, parsed.fromSize);
  }
  const responseFormat = parsed.responseFormat;
  c.log.info({ jobId: job.id, queue: true, webhook: webhook !== undefined }, 'queue request accepted');
  if (webhook) {
    c.webhooks.deliver(webhook, job.id, async () => webhookBody(await service.waitFor(job.id), c, responseFormat));
  }
  const position = await service.queuePosition(job.id).catch(() => null);
  sendJson(
    res,
    202,
    {
      request_id: job.id,
      status: 'IN_QUEUE',
      queue_position: position === null ? 0 : position - 1,
      ...urlsOf(job.id, c.baseUrl, responseFormat),
    },
    { 'x-job-id': job.id, location: `${c.baseUrl}${QUEUE_PREFIX}requests/${job.id}/status` },
  );
}

function urlsOf(id: string, baseUrl: string, responseFormat: 'b64_json' | 'url') {
  const base = `${baseUrl}${QUEUE_PREFIX}requests/${id}`;
  return {
    status_url: `${base}/status`,
    response_url: responseFormat === 'url' ? `${base}?response_format=url` : base,
    cancel_url: `${base}/cancel`,
  };
}

/** The status body of a job, fal's statuses. */
async function statusOf(job: Job, c: QueueContext): Promise<Record<string, unknown>> {
  const base = { request_id: job.id, ...urlsOf(job.id, c.baseUrl, 'b64_json') };
  switch (job.status) {
    case 'QUEUED': {
      const position = await c.service.queuePosition(job.id).catch(() => null);
      return { ...base, status: 'IN_QUEUE', queue_position: position === null ? 0 : position - 1 };
    }
    case 'RUNNING':
      return { ...base, status: 'IN_PROGRESS', step: job.step, total_steps: job.totalSteps };
    case 'SUCCEEDED':
      return { ...base, status: 'COMPLETED', metrics: { inference_time: inferenceSeconds(job) } };
    default:
      return { ...base, status: 'FAILED', error: errorOf(job) };
  }
}

function inferenceSeconds(job: Job): number | null {
  if (!job.startedAt || !job.finishedAt) return null;
  return (job.finishedAt.getTime() - job.startedAt.getTime()) / 1000;
}

function errorOf(job: Job): { code: string; message: string } {
  if (job.status === 'CANCELED') return { code: 'canceled', message: job.cancelReason ?? 'canceled' };
  return { code: job.error?.code ?? 'generation_failed', message: job.error?.message ?? 'generation failed' };
}

/**
 * `GET .../status/stream` (fal's status stream): Server-Sent Events, one `data:` line with the status body (as
 * `/status` answers it) at once and at every change (each denoising step while IN_PROGRESS), ending after COMPLETED or
 * FAILED. A client that closes the stream just stops listening; the request goes on.
 */
async function streamStatus(res: ServerResponse, job: Job, c: QueueContext): Promise<void> {
  const events = await c.service.watch(job.id);
  res.once('close', () => void events.return?.());
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    'x-accel-buffering': 'no', // nginx: pass events on at once
    'x-job-id': job.id,
  });
  const send = (body: Record<string, unknown>) => {
    if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(body)}\n\n`);
  };
  const base = { request_id: job.id, ...urlsOf(job.id, c.baseUrl, 'b64_json') };
  try {
    for await (const e of events) {
      if (e.type === 'snapshot') send(await statusOf(e.job, c));
      else if (e.type === 'started' || e.type === 'retrying') {
        send({ ...base, status: 'IN_PROGRESS', step: 0, total_steps: job.totalSteps });
      } else if (e.type === 'step') {
        send({ ...base, status: 'IN_PROGRESS', step: e.step, total_steps: e.totalSteps });
      } else {
        // Terminal: the record has the final state (times, error).
        send(await statusOf((await c.service.get(job.id)) ?? job, c));
      }
    }
  } catch (err) {
    // The head is sent: an error can only end the stream (the client sees no terminal status and may poll).
    c.log.warn({ err, jobId: job.id }, 'status stream ended early');
  } finally {
    res.end();
  }
}

async function sendResult(res: ServerResponse, job: Job, c: QueueContext, format: 'b64_json' | 'url'): Promise<void> {
  if (job.status === 'QUEUED' || job.status === 'RUNNING') {
    throw new HttpError(400, 'Request is still in progress', 'invalid_request_error', 'request_in_progress', null, {
      'retry-after': '1',
    });
  }
  if (job.status === 'CANCELED') {
    throw new HttpError(409, job.cancelReason ?? 'canceled', 'invalid_request_error', 'canceled');
  }
  if (job.status === 'FAILED') {
    const e = errorOf(job);
    throw new HttpError(500, e.message, 'server_error', e.code);
  }
  const result = await openAiResult(job, c.service, format, c.baseUrl, c.signPath).catch(
    (err: NodeJS.ErrnoException) => {
      // The image cleanup (IMAGE_MAX_AGE_S, IMAGE_MAX_BYTES) removed the files while the record lives on.
      if (err.code === 'ENOENT') {
        throw new HttpError(
          410,
          'The images of this request were removed by the cleanup',
          'invalid_request_error',
          'image_expired',
        );
      }
      throw err;
    },
  );
  sendJson(res, 200, result, { 'x-job-id': job.id });
}

async function cancel(res: ServerResponse, c: QueueContext, id: string): Promise<void> {
  const job = await requireJob(c, id);
  if (job.status === 'SUCCEEDED' || job.status === 'FAILED' || job.status === 'CANCELED') {
    return sendJson(res, 400, {
      status: 'ALREADY_COMPLETED',
      error: {
        message: `The request has ended (${job.status})`,
        type: 'invalid_request_error',
        param: null,
        code: 'already_completed',
      },
    });
  }
  await c.service.cancel(id, 'canceled by client (queue API)', c.caller);
  c.log.info({ jobId: id }, 'queue request cancel asked');
  sendJson(res, 202, { status: 'CANCELLATION_REQUESTED' });
}

/** The webhook body of an ended job. */
async function webhookBody(
  job: Job,
  c: QueueContext,
  format: 'b64_json' | 'url',
): Promise<Omit<WebhookBody, 'timestamp'>> {
  if (job.status === 'SUCCEEDED') {
    return {
      request_id: job.id,
      status: 'OK',
      payload: await openAiResult(job, c.service, format, c.baseUrl, c.signPath),
      error: null,
    };
  }
  return { request_id: job.id, status: 'ERROR', payload: null, error: errorOf(job) };
}

/** The caller's job `id` (another key's job is as unknown as a missing one). */
async function requireJob(c: QueueContext, id: string): Promise<Job> {
  const job = await c.service.get(id, c.caller);
  if (!job) throw new HttpError(404, `No request ${id}`, 'invalid_request_error', 'not_found', 'request_id');
  return job;
}

function methodNotAllowed(method: string, path: string): HttpError {
  return new HttpError(405, `${method} not allowed on ${path}`, 'invalid_request_error', 'method_not_allowed');
}
