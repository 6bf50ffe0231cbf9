/**
 * @file The progress panel: turns `jobProgress` events into a progress bar, a step count with ETA (announced
 * politely through the `role=status` line), the step previews, and the final image with a download link.
 * `#result[data-state]` mirrors the job status so styles (and tests) can follow it.
 */
import { byId, formatDuration } from './dom.ts';
import type { WebJobProgressSubscription } from './gql/graphql.ts';

type ProgressEvent = WebJobProgressSubscription['jobProgress'];
type State = 'idle' | 'queued' | 'running' | 'succeeded' | 'canceled' | 'failed';
type FinalImage = { url: string; width: number; height: number; format: string };

const TERMINAL: ReadonlySet<State> = new Set(['succeeded', 'canceled', 'failed']);

const ui = {
  section: () => byId('result', HTMLElement),
  bar: () => byId('progress', HTMLProgressElement),
  state: () => byId('progress-state', HTMLSpanElement),
  steps: () => byId('progress-steps', HTMLSpanElement),
  eta: () => byId('progress-eta', HTMLSpanElement),
  preview: () => byId('preview', HTMLImageElement),
  final: () => byId('final', HTMLImageElement),
  download: () => byId('download', HTMLAnchorElement),
};

let totalSteps = 0;
let jobId = '';
let prompt = '';

function setState(state: State, label: string): void {
  ui.section().dataset.state = state;
  ui.state().textContent = label;
}

function setSteps(step: number, total: number, etaMs: number | null): void {
  totalSteps = total;
  const bar = ui.bar();
  bar.max = Math.max(total, 1);
  bar.value = step;
  ui.steps().textContent = `Step ${step} of ${total}.`;
  // No ETA before the first timed step, nor once the last step is done (only the encode is left then).
  ui.eta().textContent = etaMs == null || step >= total ? '' : `About ${formatDuration(etaMs)} left.`;
}

function showPreview(url: string | null): void {
  if (!url) return;
  const img = ui.preview();
  img.src = url;
  img.hidden = false;
}

function showFinal(image: FinalImage | undefined): void {
  if (!image) return;
  const img = ui.final();
  img.src = image.url;
  // The prompt is the best description of the picture we have.
  img.alt = `Result for “${prompt}”`;
  img.width = image.width;
  img.height = image.height;
  img.hidden = false;
  ui.preview().hidden = true;
  const link = ui.download();
  link.href = image.url;
  link.download = `fluxql-${jobId}.${image.format.toLowerCase()}`;
  link.textContent = `Download image (${image.width}×${image.height} ${image.format})`;
  link.hidden = false;
}

/** Resets the panel for a newly queued job. */
export function startProgress(id: string, steps: number, text: string): void {
  jobId = id;
  prompt = text;
  for (const img of [ui.preview(), ui.final()]) {
    img.hidden = true;
    img.removeAttribute('src');
  }
  ui.download().hidden = true;
  setState('queued', 'Queued.');
  setSteps(0, steps, null);
}

/** Applies one event; returns true once the job has reached a final state. */
export function applyEvent(event: ProgressEvent): boolean {
  switch (event.__typename) {
    case 'JobSnapshotEvent': {
      setSteps(event.step, event.totalSteps, event.etaMs);
      showPreview(event.job.previewUrl);
      if (event.status === 'QUEUED') setState('queued', `Queued (position ${event.queuePosition ?? '?'}).`);
      else if (event.status === 'RUNNING') setState('running', 'Running.');
      else if (event.status === 'SUCCEEDED') succeed(event.job.images[0]);
      else if (event.status === 'CANCELED') setState('canceled', 'Cancelled.');
      else setState('failed', 'Failed.');
      break;
    }
    case 'JobStartedEvent':
      setState('running', 'Running.');
      setSteps(0, event.totalSteps, null);
      break;
    case 'JobStepEvent':
      setState('running', 'Running.');
      setSteps(event.step, event.totalSteps, event.etaMs);
      showPreview(event.previewUrl);
      break;
    case 'JobSucceededEvent':
      succeed(event.images[0]);
      break;
    case 'JobCanceledEvent':
      setState('canceled', `Cancelled (${event.reason}).`);
      ui.eta().textContent = '';
      break;
    case 'JobFailedEvent':
      setState('failed', `Failed: ${event.message}`);
      ui.eta().textContent = '';
      break;
    case 'NotFoundError':
      setState('failed', event.message);
      break;
  }
  return isFinished();
}

function succeed(image: FinalImage | undefined): void {
  setSteps(totalSteps, totalSteps, null);
  setState('succeeded', 'Done.');
  showFinal(image);
}

/** Marks the job failed for a reason outside the event stream (lost connection, …). */
export function failProgress(message: string): void {
  setState('failed', message);
  ui.eta().textContent = '';
}

/** Whether the shown job has reached a final state. */
export function isFinished(): boolean {
  return TERMINAL.has((ui.section().dataset.state ?? 'idle') as State);
}
