/**
 * @file Recent jobs (the `jobs` query, newest first): status, prompt, mode, size and steps, with a thumbnail
 * linking to the image of finished jobs. Refreshed on load, after each job ends, and by the Refresh button.
 */
import { request } from './api.ts';
import { byId, el } from './dom.ts';
import type { WebRecentJobsQuery } from './gql/graphql.ts';
import { WebRecentJobsQuery as RecentJobsDoc } from './operations.ts';

type Job = WebRecentJobsQuery['jobs']['edges'][number]['node'];

const SHOWN = 10;

function jobItem(job: Job): HTMLLIElement {
  const item = el('li', { 'data-status': job.status, 'data-job-id': job.jobId });
  const image = job.images[0];
  if (image) {
    const link = el('a', { href: image.url, 'aria-label': `Open image of “${job.prompt}”` });
    // Thumbnails keep the image's aspect ratio inside a fixed box (CSS object-fit).
    link.append(el('img', { src: image.url, alt: '', width: '64', height: '64', loading: 'lazy' }));
    item.append(link);
  }
  const text = el('div', { class: 'job-text' });
  text.append(
    el('span', { class: `status status-${job.status.toLowerCase()}` }, job.status.toLowerCase()),
    el('span', { class: 'job-prompt' }, job.prompt),
    el('span', { class: 'hint' }, `${job.model.mode} · ${job.width}×${job.height} · ${job.steps} steps`),
  );
  item.append(text);
  return item;
}

/** Reloads the list; a failure is shown in the list itself. */
export async function refreshJobs(): Promise<void> {
  const list = byId('jobs-list', HTMLOListElement);
  try {
    const { jobs } = await request(RecentJobsDoc, { first: SHOWN });
    list.replaceChildren(...jobs.edges.map((e) => jobItem(e.node)));
    if (jobs.edges.length === 0) list.append(el('li', { class: 'hint' }, 'No jobs yet.'));
  } catch (err) {
    list.replaceChildren(el('li', { class: 'field-error' }, `Could not load jobs: ${(err as Error).message}`));
  }
}
