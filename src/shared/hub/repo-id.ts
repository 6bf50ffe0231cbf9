/** @file `org/name[@revision]`: how MODEL_REPO names a Hugging Face model. */

/** A parsed model id. */
export interface HubModelId {
  /** `org/name`. */
  repo: string;
  /** Branch, tag or commit hash. @default 'main' */
  revision: string;
}

// Hub repo names: letters, digits, `-`, `_`, `.`; no leading/trailing `.`/`-` rules are left to the hub to judge.
const ID = /^([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$/;

/** Parses `org/name[@revision]`, or returns undefined when `spec` is not shaped like one. */
export function parseHubModelId(spec: string): HubModelId | undefined {
  const m = ID.exec(spec);
  if (!m || spec.includes('..')) return undefined;
  return { repo: `${m[1]}/${m[2]}`, revision: m[3] ?? 'main' };
}

/** A 40-hex git commit id (revisions that need no ref lookup). */
export const COMMIT_HASH = /^[0-9a-f]{40}$/;
