/**
 * @file The LoRA set manager: parses LoRA files from LORA_DIR on demand (cached by name, re-read when the file
 * changes), keeps the server-wide default set (`loadLora` / `unloadLora`), and turns any set into engine feeds.
 *
 * Invariants: a LoRA is parsed and fully validated before any state changes, so a malformed file leaves the
 * default set as it was; switching sets never touches ORT sessions, it only builds (or reuses) host arrays.
 */

import type { HostTensor } from '../../runtime/index.ts';
import type { LoraEngineLayout } from '../../shared/vocabulary/lora-layout.ts';
import { LoraError, type LoraErrorData } from './errors.ts';
import { type ActiveLora, buildLoraFeeds } from './feeds.ts';
import { type LoraFile, listLoraFiles, resolveLoraFile } from './lora-dir.ts';
import type { LoraModelSpec } from './model-layers.ts';
import { parseLoraFile } from './parse.ts';
import { loraFileName, loraSetKey, loraStrengthProblem } from './selection.ts';
import { describeLora, type LoraInfo, type LoraSelection, type ParsedLora } from './types.ts';

/** Options of a {@link LoraManager}. */
export interface LoraManagerOptions {
  /** The only directory LoRA files are read from (LORA_DIR). Without it every load fails with `not_found`. */
  loraDir?: string;
  /** The model's targetable layers. */
  spec: LoraModelSpec;
  /** The model's QK-norm weights by module (read once, on the first feed build). */
  baseNorms: () => ReadonlyMap<string, Float32Array>;
  /** Parsed LoRAs kept besides the default set. @default 16 */
  cacheSize?: number;
}

/** A parsed LoRA with its file identity. */
interface CachedLora {
  file: LoraFile;
  lora: ParsedLora;
  info: LoraInfo;
  /** Bumped on every (re)parse: keys the feed cache. */
  version: number;
}

/** What {@link LoraManager.scan} finds in LORA_DIR. */
export interface LoraScan {
  loras: LoraInfo[];
  /** Files that do not parse for this model, with the reason. */
  invalid: { name: string; sizeBytes: number; error: LoraErrorData }[];
}

const FEED_CACHE_SIZE = 8;

/** See the file header. */
export class LoraManager {
  private readonly parsed = new Map<string, CachedLora>();
  private readonly defaults = new Map<string, number>();
  private readonly feedCache = new Map<string, Record<string, HostTensor>>();
  private norms: ReadonlyMap<string, Float32Array> | undefined;
  private versions = 0;

  constructor(private readonly options: LoraManagerOptions) {}

  /** LORA_DIR, if configured. */
  get loraDir(): string | undefined {
    return this.options.loraDir;
  }

  /** Every LoRA file in LORA_DIR with its metadata (parses files not seen before; invalid ones are reported). */
  scan(): LoraScan {
    const dir = this.options.loraDir;
    const out: LoraScan = { loras: [], invalid: [] };
    if (!dir) return out;
    for (const f of listLoraFiles(dir)) {
      try {
        out.loras.push(this.get(f.name).info);
      } catch (err) {
        if (!(err instanceof LoraError)) throw err;
        out.invalid.push({ name: f.name, sizeBytes: f.sizeBytes, error: err.toData() });
      }
    }
    return out;
  }

  /** Metadata of one LoRA (parsing it if needed). @throws LoraError */
  info(name: string): LoraInfo {
    return this.get(name).info;
  }

  /** Adds `name` to the default set at `strength` (replacing its strength if present). @throws LoraError, set unchanged */
  load(name: string, strength = 1): LoraInfo {
    checkStrength(name, strength);
    const c = this.get(name); // parses and validates first: a bad file throws before the set changes
    this.defaults.set(c.file.name, strength);
    return c.info;
  }

  /** Removes `name` from the default set; false when it was not there. */
  unload(name: string): boolean {
    return this.defaults.delete(loraFileName(name));
  }

  /** The default set, in load order. */
  activeSet(): LoraSelection[] {
    return [...this.defaults].map(([name, strength]) => ({ name, strength }));
  }

  /**
   * Parses every member of `set` (cached) and checks strengths and duplicates.
   * @throws LoraError (`bad_argument`, `not_found`, `forbidden_path`, parse errors)
   */
  resolve(set: readonly LoraSelection[]): ActiveLora[] {
    return this.resolveCached(set).map(({ c, strength }) => ({ name: c.file.name, lora: c.lora, strength }));
  }

  /**
   * The transformer feeds of `set` on the engine `layout` (`layoutKey` identifies the engine), cached: switching
   * back to a recent set costs a map lookup. @throws LoraError
   */
  feeds(layout: LoraEngineLayout, layoutKey: string, set: readonly LoraSelection[]): Record<string, HostTensor> {
    const members = this.resolveCached(set);
    // File versions in the names: a LoRA file re-parsed since is another set.
    const key = `${layoutKey}#${loraSetKey(members.map(({ c, strength }) => ({ name: `${c.file.name}@${c.version}`, strength })))}`;
    const hit = this.feedCache.get(key);
    if (hit) {
      this.feedCache.delete(key); // re-insert: most recently used last
      this.feedCache.set(key, hit);
      return hit;
    }
    this.norms ??= this.options.baseNorms();
    const active = members.map(({ c, strength }) => ({ name: c.file.name, lora: c.lora, strength }));
    const feeds = buildLoraFeeds(layout, active, this.norms);
    this.feedCache.set(key, feeds);
    while (this.feedCache.size > FEED_CACHE_SIZE) this.feedCache.delete(this.feedCache.keys().next().value!);
    return feeds;
  }

  private resolveCached(set: readonly LoraSelection[]): { c: CachedLora; strength: number }[] {
    const seen = new Set<string>();
    return set.map(({ name, strength }) => {
      checkStrength(name, strength);
      const c = this.get(name);
      if (seen.has(c.file.name)) throw new LoraError('bad_argument', 'appears twice in one LoRA set', name);
      seen.add(c.file.name);
      return { c, strength };
    });
  }

  /** The parsed LoRA `name`, re-parsed when its file changed. @throws LoraError */
  private get(name: string): CachedLora {
    const dir = this.options.loraDir;
    if (!dir) throw new LoraError('not_found', 'LORA_DIR is not configured', name);
    const file = resolveLoraFile(dir, name);
    const cached = this.parsed.get(file.name);
    if (cached && cached.file.mtimeMs === file.mtimeMs && cached.file.sizeBytes === file.sizeBytes) return cached;
    const lora = parseLoraFile(file.path, this.options.spec, file.name);
    const entry: CachedLora = {
      file,
      lora,
      info: describeLora(file.name, lora, file.sizeBytes),
      version: ++this.versions,
    };
    this.parsed.delete(file.name);
    this.parsed.set(file.name, entry);
    this.evict();
    return entry;
  }

  /** Drops the least recently parsed LoRAs beyond the cache size, never a member of the default set. */
  private evict(): void {
    const max = this.options.cacheSize ?? 16;
    for (const name of this.parsed.keys()) {
      if (this.parsed.size <= max) break;
      if (!this.defaults.has(name)) this.parsed.delete(name);
    }
  }
}

function checkStrength(name: string, strength: number): void {
  const problem = loraStrengthProblem(strength);
  if (problem) throw new LoraError('bad_argument', problem, name);
}
