/**
 * @file A loaded engine: the manifest plus one ORT session per component, created once and reused for every run.
 * Sessions of components shared between modes (text encoders, VAE) are loaded once per path.
 */
import { dirname, resolve } from 'node:path';
import { COMPONENTS, type ComponentName, componentPath, type EngineManifest, readManifest } from './manifest.ts';
import { Session, type SessionOptions } from './session.ts';

/** Sessions of one compiled engine. */
export interface Engine {
  manifestPath: string;
  manifest: EngineManifest;
  sessions: Record<ComponentName, Session>;
  /** Mode S: sessions of the transformer split after its first block (manifest `stepCache`). */
  stepCache?: { head: Session; tail: Session };
  /** Mode XL: session of the modulation component (manifest `modulation`), run once per sample over all steps. */
  modulation?: Session;
}

/** Caches sessions by ONNX path so modes that share a component share its session. */
export class EngineLoader {
  private readonly sessions = new Map<string, Promise<Session>>();
  /** Number of ORT sessions created so far (tests assert that hot paths create none). */
  sessionsCreated = 0;

  constructor(private readonly options: SessionOptions = {}) {}

  /** Reads the manifest and opens (or reuses) a session per component. */
  async load(manifestPath: string): Promise<Engine> {
    const manifest = readManifest(manifestPath);
    const entries = await Promise.all(
      COMPONENTS.map(async (c) => [c, await this.session(c, componentPath(manifestPath, manifest, c))] as const),
    );
    const sessions = Object.fromEntries(entries) as Record<ComponentName, Session>;
    const at = (file: string) => resolve(dirname(manifestPath), file);
    const engine: Engine = { manifestPath, manifest, sessions };
    if (manifest.modulation)
      engine.modulation = await this.session('transformer_modulation', at(manifest.modulation.file));
    const sc = manifest.stepCache;
    if (!sc) return engine;
    const [head, tail] = await Promise.all([
      this.session('transformer_head', at(sc.head.file)),
      this.session('transformer_tail', at(sc.tail.file)),
    ]);
    return { ...engine, stepCache: { head, tail } };
  }

  /**
   * Opens (or reuses) the session of a component the manifest schema does not list, e.g. a control engine's
   * `vae_encoder`; shared and released like the others.
   */
  component(component: string, path: string): Promise<Session> {
    return this.session(component, resolve(path));
  }

  private session(component: string, path: string): Promise<Session> {
    let s = this.sessions.get(path);
    if (!s) {
      this.sessionsCreated++;
      s = Session.create(component, path, this.options);
      // A failed load must not poison the cache: the next call retries.
      s.catch(() => this.sessions.delete(path));
      this.sessions.set(path, s);
    }
    return s;
  }

  /** Releases every session. */
  async close(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.allSettled(all.map(async (s) => (await s).release()));
  }
}
