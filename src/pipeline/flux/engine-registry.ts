/**
 * @file The engines of one loaded model, by mode and variant: each is planned (compressed modes), compiled (or taken
 * from the cache), loaded into ORT sessions once, and shared by every caller. Mode S also calibrates its step cache
 * once per model before its first use. Planning and calibration run the model, so they come in as hooks from
 * {@link FluxPipeline}; this file only orders the build and keeps the results.
 */
import type { Engine, EngineLoader, EngineManifest, Session } from '../../runtime/index.ts';
import { type ModePlan, type ModeSpec, REFERENCE_MODE, resolveModeFor } from '../../shared/vocabulary/index.ts';
import type { EngineCompilerPort } from './compiler-port.ts';
import { ensureEngine, ensureVaeEncoder, type ModelSource } from './engine-cache.ts';

/** Which engine of a mode: the plain one, or the LoRA-enabled one (optionally control-capable, BFL Control LoRAs). */
export interface EngineVariant {
  lora?: boolean;
  /** Extra `hidden_states` channels of a control-capable LoRA engine (64 for FLUX.1-Canny/Depth-dev-lora). */
  controlChannels?: number;
}

/** The model-running steps of an engine build, supplied by the pipeline. */
export interface EngineBuildHooks {
  /** The per-layer plan of a planned mode (measured once per model and cached); undefined for unplanned modes. */
  plan(spec: ModeSpec): Promise<ModePlan | undefined>;
  /** Mode S: calibrates the step-cache threshold of `engine` (runs generations on it). */
  calibrate(engine: Engine, mode: string): Promise<void>;
}

/** See the file header. */
export class EngineRegistry {
  private readonly engines = new Map<string, Promise<Engine>>();
  private encoderPath: Promise<string> | undefined;

  constructor(
    private readonly source: ModelSource,
    private readonly loader: EngineLoader,
    private readonly options: { compiler: EngineCompilerPort; cacheDir?: string; onLog?: (message: string) => void },
    private readonly hooks: EngineBuildHooks,
  ) {}

  /** Number of ORT sessions created so far. */
  get sessionsCreated(): number {
    return this.loader.sessionsCreated;
  }

  /**
   * The loaded (or loading) engine of `mode`; compiles it on first use. `lora: true` gives the mode's LoRA-enabled
   * variant (a separate engine, used only while a LoRA set is non-empty; encoders and VAE sessions are shared);
   * `controlChannels` with it the control-capable one (widened input, plus the VAE encoder; BFL Control LoRAs).
   */
  engine(mode = REFERENCE_MODE, variant: EngineVariant = {}): Promise<Engine> {
    const control = variant.lora ? (variant.controlChannels ?? 0) : 0;
    const key = variant.lora ? `${mode}+lora${control ? `+control${control}` : ''}` : mode;
    let e = this.engines.get(key);
    if (!e) {
      // Compressed modes (L, M, S) are compiled from a per-layer plan, measured once per model (elastic-plan.ts).
      e = Promise.resolve()
        .then(() => resolveModeFor(mode, this.source.name, this.source.modes))
        .then((spec) => this.hooks.plan(spec))
        .then((plan) =>
          ensureEngine(this.options.compiler, this.source, {
            mode,
            cacheDir: this.options.cacheDir,
            onLog: this.options.onLog,
            lora: variant.lora,
            controlChannels: control,
            plan,
          }),
        )
        .then((m) => this.loader.load(m))
        .then(async (engine) => {
          if (engine.manifest.stepCache && !variant.lora) {
            // Mode S: calibrate the step-cache threshold once per model; its generations run on this loaded engine.
            this.engines.set(key, Promise.resolve(engine));
            await this.hooks.calibrate(engine, mode);
          }
          return engine;
        });
      e.catch(() => this.engines.delete(key));
      this.engines.set(key, e);
    }
    return e;
  }

  /** Manifest of a loaded mode. */
  async manifest(mode = REFERENCE_MODE): Promise<EngineManifest> {
    return (await this.engine(mode)).manifest;
  }

  /** The VAE encoder of the model (img2img, inpainting), compiled and opened on first use. */
  async imageEncoder(): Promise<Session> {
    this.encoderPath ??= ensureVaeEncoder(this.options.compiler, this.source, this.options);
    const path = await this.encoderPath.catch((err) => {
      this.encoderPath = undefined;
      throw err;
    });
    return this.loader.component('vae_encoder', path);
  }

  /** The session of an extra component (one the manifest schema does not list), opened once. */
  component(name: string, path: string): Promise<Session> {
    return this.loader.component(name, path);
  }

  /** Releases every ORT session. */
  close(): Promise<void> {
    return this.loader.close();
  }
}
