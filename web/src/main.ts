/**
 * @file Entry point of the page: loads the modes, LoRAs and recent jobs, then runs Generate → `generateImage`
 * (text-to-image, or an edit of an uploaded image: `edit.ts`)
 * → `jobProgress` (graphql-ws) → final image, with Cancel → `cancelJob`. Typed failures (ValidationError, …)
 * are shown next to the field they concern.
 */
import './style.css';
import { connect, getToken, RequestError, request, setToken, subscribe } from './api.ts';
import { byId } from './dom.ts';
import { watchStrength } from './edit.ts';
import { clearErrors, FieldError, readInput, showFieldError, showFormError, syncCustomSize } from './form.ts';
import { refreshJobs } from './jobs.ts';
import { loadLoras } from './lora.ts';
import { loadModels } from './models.ts';
import { WebCancelMutation, WebGenerateMutation, WebJobProgressSubscription } from './operations.ts';
import { applyEvent, failProgress, isFinished, startProgress } from './progress.ts';

const form = byId('generate-form', HTMLFormElement);
const generateButton = byId('generate', HTMLButtonElement);
const cancelButton = byId('cancel', HTMLButtonElement);

/** The job being followed, and how to stop following it. */
let active: { id: string; unsubscribe: () => void } | undefined;

function setBusy(busy: boolean): void {
  generateButton.disabled = busy;
  cancelButton.disabled = !busy;
}

function endJob(): void {
  active?.unsubscribe();
  active = undefined;
  setBusy(false);
  void refreshJobs();
}

function follow(id: string): void {
  const unsubscribe = subscribe(
    WebJobProgressSubscription,
    { id },
    {
      next: ({ jobProgress }) => {
        if (applyEvent(jobProgress)) endJob();
      },
      error: (message) => {
        failProgress(`Lost the progress stream: ${message}`);
        endJob();
      },
      complete: () => {
        if (active?.id === id) endJob();
      },
    },
  );
  active = { id, unsubscribe };
}

async function generate(): Promise<void> {
  clearErrors();
  let input: Awaited<ReturnType<typeof readInput>>;
  try {
    input = await readInput();
  } catch (err) {
    if (err instanceof FieldError) showFieldError(err.field, err.message)?.focus();
    else showFormError(`Could not read the form: ${(err as Error).message}`);
    return;
  }
  setBusy(true);
  cancelButton.disabled = true;
  try {
    const { generateImage: r } = await request(WebGenerateMutation, { input });
    switch (r.__typename) {
      case 'MutationGenerateImageSuccess':
        startProgress(r.data.jobId, r.data.totalSteps, input.prompt);
        follow(r.data.id);
        cancelButton.disabled = false;
        return;
      case 'ValidationError':
        showFieldError(r.field, r.message)?.focus();
        break;
      case 'UnknownModelError':
        showFieldError('mode', `${r.message} (available: ${r.available.join(', ')})`)?.focus();
        break;
      case 'QueueFullError':
        showFormError(`${r.message} Try again in ${r.retryAfterSeconds} s.`);
        break;
      case 'LoraError':
        showFieldError('loras', r.message);
        break;
    }
  } catch (err) {
    showFormError(err instanceof RequestError ? err.message : `Request failed: ${(err as Error).message}`);
  }
  setBusy(false);
}

async function cancel(): Promise<void> {
  if (!active) return;
  cancelButton.disabled = true;
  try {
    const { cancelJob: r } = await request(WebCancelMutation, { id: active.id });
    // The CANCELED event arrives on the subscription; only a missing job is reported here.
    if (r.__typename === 'NotFoundError') showFormError(r.message);
  } catch (err) {
    showFormError(`Cancel failed: ${(err as Error).message}`);
    if (!isFinished()) cancelButton.disabled = false;
  }
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  if (!active) void generate();
});
cancelButton.addEventListener('click', () => void cancel());
byId('prompt', HTMLTextAreaElement).addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    form.requestSubmit();
  }
});
byId('aspectRatio', HTMLSelectElement).addEventListener('change', syncCustomSize);
watchStrength();
byId('refresh-jobs', HTMLButtonElement).addEventListener('click', () => void refreshJobs());
const tokenInput = byId('token', HTMLInputElement);
tokenInput.value = getToken();
byId('token-form', HTMLFormElement).addEventListener('submit', (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  void init();
});

async function init(): Promise<void> {
  clearErrors();
  try {
    await Promise.all([loadModels(), loadLoras()]);
    connect();
    document.body.dataset.ready = 'true';
  } catch (err) {
    showFormError(`Could not load the models: ${(err as Error).message}`);
  }
  await refreshJobs();
}

void init();
