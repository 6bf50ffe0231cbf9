/**
 * @file `createCudaExecutor`: the {@link StepExecutor} over the native CUDA engine (`engines/cuda`, a
 * `fluxql-engine --serve` child process reached through `src/runtime/cuda/`).
 *
 * The host does what the ORT pipeline's host does, with the same code, so both engines start from the same
 * numbers: the project's tokenizers (CLIP 77, T5 `maxSequenceLength`), the sigma schedule of `schedule.ts` (dynamic
 * shift of the image token count), and the seeded starting noise of `noise.ts` (torch's CPU generator, one per
 * sample), packed and sent to the engine as explicit latents. The engine runs the encoders, every step and the VAE
 * on the GPU; only token ids, latents at prepare, and the final RGB8 pixels cross the pipe.
 *
 * Batching: one `prepare` call groups its requests by (size, steps, T5 length, edit kind, LoRA set) into engine
 * jobs of at most `maxBatch` samples; a sample's handle names its job and its engine sample id. Joining (issue 16):
 * a plain text-to-image group (no edit, true CFG or control image, and no step caching: the engine keeps those per
 * job, and refuses joins into a caching job) whose size, T5 length and LoRA set match a live plain job with room (live samples + the group <= `maxBatch`)
 * is sent into that job with the engine's `join` (its own schedule: the step count may differ) instead of becoming a
 * job of its own, so requests the scheduler admits at a step boundary run in the same engine batch (one GEMM per
 * layer for all of them). `step` runs one engine step per job (jobs are sent back to back and answered in order):
 * it advances every sample of the job that has steps left by one of its own steps (the engine reports each
 * sample's progress); a sample that is done stays frozen until released. Stepping only some unfinished samples of a
 * job is refused (the scheduler steps every running handle each turn, and a cancelled sample is released, not left
 * behind). `decode` and the preview ask the engine for the named samples only. Release: a plain job drops the
 * released samples at once (the engine compacts the job to the others, so finished samples stop costing transformer
 * rows); other jobs, and every job once its last sample goes, are released whole.
 *
 * Engine failure: if the engine process ends unasked (GPU fault: the engine exits after a CUDA error; crash; kill),
 * every call pending on it rejects with `CudaEngineExitedError` (so the scheduler fails the jobs of that call
 * with code `engine_crashed` and the engine's message), every sample prepared on it is lost (later calls
 * naming it get {@link CudaSampleLostError}, also `engine_crashed`; `release` forgets it), `health()` is not ready
 * until a new engine, started at once, has loaded the model. A start that fails is retried by the next call, not
 * in a loop. (The ONNX engine's supervisor, `supervisor.ts`, does the same with backoff for its child process.)
 *
 * Edits (img2img, inpainting, true CFG) as the ONNX path computes them (`flux/edit.ts`), the host doing the same
 * share: the input image is resized and scaled to [−1, 1] here, the engine's VAE encoder samples the posterior with
 * the normals the request's torch generator draws here (`encode`), and the starting latents `σ₀·noise + (1 − σ₀)·x0`,
 * the cut schedule and the packed mask are made here. The engine then runs the per-step parts inside its step (which
 * it replays from a CUDA graph): the inpainting blend with the re-noised image latents, and the negative branch of
 * true CFG as B more transformer rows of the same step. Samples of one engine job share the edit kind (plain,
 * img2img, inpainting; true CFG or not) and the schedule cut, so those are part of the grouping key.
 *
 * LoRAs (issue 16): files from LORA_DIR are parsed and validated here by the ONNX path's LoRA layer (same formats,
 * same typed `LoraError`s, the same default set), reduced to factors per engine layer (`cuda-lora.ts`), and sent to
 * the engine once (`lora_load`); each engine job names its set (`prepare`'s `loras`: names and strengths, the
 * request's own or the default set as it is at prepare), so samples with different sets never share a job. Switching
 * sets reloads no weights and recompiles nothing: the engine applies the adapters as low-rank products.
 *
 * BFL Control LoRAs with a control image (`cuda-control.ts`): the same checks and typed errors as the ONNX path
 * (`ControlImageError` `missing` / `unexpected` / `invalid_image`, `LoraError` `unsupported` for an input a control
 * image cannot fill); the engine's encoder makes the control latents with the request generator's first normals, the
 * starting noise comes next, and the job's control latents go with `prepare` once.
 *
 * Modes (`cuda-modes.ts`): `original` and `XL` run the base plan, `S` the engine's fp8 plan (or the planned S
 * rules); the engine makes the plans' alternate weights once at load and each job names its plan, so one loaded
 * engine serves every mode with no reload. Samples of different modes never share an engine job (the mode is part
 * of the grouping key). `L` and `M` (bf16 base, with `cacheDir`): on the first engine start the executor reads the
 * planner's manifest for this engine build, card and model (`cuda-plan-manifest.ts`), or, without one, calibrates
 * the model on a separate engine process (`cuda-calibration.ts`: `calibrate`, plan, verify; then, reloaded with the
 * plans, each mode's step-cache threshold from generated images, `cuda-step-cache.ts`; a fault there cannot take the
 * serving engine down), stores the manifest, and loads the serving engine with the plans of L, M and S. Jobs of a mode
 * with a calibrated threshold prepare with its `step_cache` (per job: other modes' jobs send none, and the mode is in
 * the grouping key); `info().modePlans` reports each planned mode's plan and step caching for the `models` query. When
 * planning fails, original, XL and S are served (S: the fp8 preset, no caching) and L and M are listed unavailable
 * with the reason (`capabilities.unavailable`). That planning path is `cuda-mode-planning.ts`, which `fluxql compile
 * --engine cuda` runs too, so a manifest compiled ahead is what the first start reads.
 *
 * Capabilities (`info().capabilities`): those modes, LoRA (with its port), control images, edits, sides up to
 * 2048. The service refuses requests outside them before they get here.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  CudaEngineClient,
  type CudaEngineExitedError,
  type CudaEngineInfo,
  type CudaLoadSpec,
  type CudaPrecision,
  type CudaStepCache,
  cudaEncode,
  cudaPrepareEdit,
} from '../runtime/cuda/index.ts';
import { type FluxTransformerConfig, REFERENCE_MODE } from '../shared/vocabulary/index.ts';
import { readCudaBenchmarks } from './cuda-benchmarks.ts';
import { cudaControlSample } from './cuda-control.ts';
import { CudaLoraResidency, cudaLoraLayout, loraErrorOf } from './cuda-lora.ts';
import { type CudaModel, loadCudaModel, planCudaModes } from './cuda-mode-planning.ts';
import { cudaLoadPlans, cudaModeOf, cudaModeTable } from './cuda-modes.ts';
import {
  type EngineHealth,
  type ExecutorModePlan,
  type ExecutorStats,
  type LoraAdminPort,
  type ModelInfo,
  type RgbImage,
  type SampleHandle,
  type SampleRequest,
  type StepExecutor,
  type StepResult,
  UnknownHandleError,
} from './executor.ts';
import { checkControlRequest, controlChannelsOf } from './flux/control.ts';
import {
  checkEditRequest,
  DEFAULT_STRENGTH,
  type EditState,
  editStartIndex,
  prepareEditSample,
  usesTrueCfg,
} from './flux/edit.ts';
import { type LatentGrid, packLatents } from './flux/latents.ts';
import { noiseForSeeds, TorchCpuGenerator } from './flux/noise.ts';
import { latentPreviewRgb } from './flux/preview.ts';
import { groupBy } from './flux/sample-state.ts';
import { type FlowMatchConfig, fluxSigmas } from './flux/schedule.ts';
import type { FluxTokenizers } from './flux/tokenize.ts';
import { FLUX_VAE_SCALING, FLUX_VAE_SHIFT } from './flux/vae-scaling.ts';
import { createLoraManager } from './lora/engine-layout.ts';
import type { ActiveLora } from './lora/feeds.ts';
import type { LoraManager } from './lora/lora-manager.ts';
import { loraFileName, loraSetKey } from './lora/selection.ts';
import type { LoraInfo, LoraSelection } from './lora/types.ts';
import { checkMode, checkSampleRequest } from './sample-checks.ts';

/** Options of {@link createCudaExecutor}. */
export interface CudaExecutorOptions {
  /** Diffusers model folder (`text_encoder/`, `text_encoder_2/`, `transformer/`, `vae/`, tokenizers, scheduler). */
  modelDir: string;
  /** The `fluxql-engine` executable. */
  engineBin: string;
  /** @default 'bf16' */
  precision?: CudaPrecision;
  /** Largest engine batch. @default 4 */
  maxBatch?: number;
  /** `fluxql-engine --bench` results to report in `models` (rows of the loaded precision). */
  benchResults?: string;
  /** The only folder LoRA files are read from (LORA_DIR); without it every LoRA is `not_found`. */
  loraDir?: string;
  /** GPU memory the engine may hold for LoRA adapters, MiB (the engine's own default, FQ_LORA_MAX_MB, without). */
  loraMaxMb?: number;
  /** The per-layer planner measures and routes fp8row next to fp8 (CUDA_PLANNER_FP8ROW). @default false */
  plannerFp8row?: boolean;
  /**
   * Step caching (First-Block-Cache) for the jobs of every mode without its own; absent: off. A planned mode's
   * calibrated threshold (`cuda-step-cache.ts`) wins over it for that mode's jobs (engines/cuda/NOTES.md session 9).
   */
  stepCache?: CudaStepCache;
  /**
   * The engine cache folder (CACHE_DIR): the per-layer planner's manifests go to `<cacheDir>/cuda-plans/`. Without
   * it the planner does not run and L and M are not served (tests that do not exercise it stay quick).
   */
  cacheDir?: string;
  /** Environment of the engine process. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** Engine log lines (stderr) and executor events. */
  onLog?: (line: string) => void;
}

/** The starting latents' channels (FLUX's VAE) and packed features per token. */
const LATENT_CHANNELS = 16;
const PACKED_CHANNELS = 64;
/** Largest side the engine runs. */
const MAX_SIDE = 2048;

/** A sample prepared on an engine that has since ended: it cannot be stepped or decoded. */
export class CudaSampleLostError extends Error {
  override name = 'CudaSampleLostError';
  readonly code = 'engine_exited';
  constructor(
    readonly handle: string,
    cause: CudaEngineExitedError,
  ) {
    super(`sample ${handle} was lost with its CUDA engine (${cause.message}); the engine has been restarted`, {
      cause,
    });
  }
}

/** The engine executable does not exist (not built here, or CUDA_ENGINE_BIN points elsewhere). */
export class CudaEngineNotFoundError extends Error {
  override name = 'CudaEngineNotFoundError';
  readonly code = 'engine_not_found';
  constructor(readonly bin: string) {
    super(
      `no CUDA engine executable at ${bin}: build it on the GPU machine (engines/cuda/README.md) or set CUDA_ENGINE_BIN`,
    );
  }
}

/** An executor of this kind, with the engine process exposed for tests and diagnostics. */
export interface CudaStepExecutor extends StepExecutor {
  /** The card and engine state as the current engine reports it (starts one when none runs). */
  engineInfo(): Promise<CudaEngineInfo>;
  /** Pid of the current engine process, if one runs. */
  enginePid(): number | undefined;
  stats(): Promise<ExecutorStats>;
}

interface EngineJob {
  client: CudaEngineClient;
  id: number;
  grid: LatentGrid;
  height: number;
  width: number;
  /** Engine steps run on the job, and that plus the most steps any sample has left. */
  step: number;
  steps: number;
  /** Live samples by handle. */
  live: Map<SampleHandle, Sample>;
  /** Plain text-to-image jobs: what a joining group must match (size, T5 length, LoRA set); others never join. */
  joinKey?: string;
  /** Samples of `prepare` calls under way that chose to join this job (counted against `maxBatch`). */
  reserved: number;
  /** Set when the job's engine ended. */
  lost?: CudaEngineExitedError;
  /** Step-cache counters the engine last reported for the job (jobs with step caching). */
  cache?: { full: number; cached: number };
}

/** A sample: its job, its engine sample id (PROTOCOL.md `samples`), its steps done and its schedule's length. */
interface Sample {
  job: EngineJob;
  id: number;
  step: number;
  steps: number;
}

/** Starts the engine, loads the model on the GPU and returns the executor (fails fast when either fails). */
export async function createCudaExecutor(options: CudaExecutorOptions): Promise<CudaStepExecutor> {
  if (!existsSync(options.engineBin)) throw new CudaEngineNotFoundError(options.engineBin);
  // Layout, key maps and configs are resolved here, by the same code as the ORT path; the engine gets a load spec.
  const model = await loadCudaModel(options.modelDir);
  const loras = createLoraManager(model.repo, options.loraDir);
  const config = model.repo.components.transformer.config as FluxTransformerConfig;
  const executor = new CudaExecutor(options, model, loras, new CudaLoraResidency(cudaLoraLayout(config)));
  await executor.start();
  return executor;
}

class CudaExecutor implements CudaStepExecutor {
  readonly #o: CudaExecutorOptions;
  readonly #precision: CudaPrecision;
  /** The modes served and the engine plan of each (`cuda-modes.ts`); L and M once planned at the first start. */
  #modes: ReturnType<typeof cudaModeTable>;
  /** Set once the first start has decided the modes (planned, read from a manifest, or why not). */
  #planned = false;
  /** The planned modes' plans and step caching as measured (`models` query); undefined without a planner run. */
  #modePlans: Record<string, ExecutorModePlan> | undefined;
  /** The model as the engine and the planner read it (`cuda-mode-planning.ts`). */
  readonly #model: CudaModel;
  readonly #maxBatch: number;
  readonly #modelDir: string;
  readonly #spec: CudaLoadSpec;
  readonly #tokenizers: FluxTokenizers;
  readonly #scheduler: FlowMatchConfig;
  readonly #samples = new Map<SampleHandle, Sample>();
  /** Live engine jobs (joining candidates). */
  readonly #jobs = new Set<EngineJob>();
  #info: ModelInfo | undefined;
  #ready: Promise<CudaEngineClient> | undefined;
  #current: CudaEngineClient | undefined;
  #closed = false;
  #starts = 0;
  #exits = 0;
  /** Engine jobs `prepare` created and samples it joined into live jobs (ExecutorStats.engineJobs / joinedSamples). */
  #engineJobs = 0;
  #joinedSamples = 0;
  /** Step-cache counts over all jobs (ExecutorStats.stepCache). */
  readonly #cacheStats = { full: 0, cached: 0 };
  #health: EngineHealth = { ready: false, reason: 'the CUDA engine is starting' };
  readonly #listeners = new Set<(h: EngineHealth) => void>();
  readonly #loras: LoraManager;
  readonly #residency: CudaLoraResidency;
  readonly loraAdmin: LoraAdminPort;

  constructor(o: CudaExecutorOptions, model: CudaModel, loras: LoraManager, residency: CudaLoraResidency) {
    const t = o.stepCache?.threshold;
    if (t !== undefined && !(Number.isFinite(t) && t >= 0))
      throw new RangeError(`CUDA executor: stepCache.threshold must be a finite number >= 0, got ${t}`);
    this.#o = o;
    this.#precision = o.precision ?? 'bf16';
    this.#modes = cudaModeTable(
      this.#precision,
      undefined,
      'no plan cache folder (cacheDir) was given, so the per-layer planner did not run',
    );
    this.#maxBatch = o.maxBatch ?? 4;
    this.#model = model;
    this.#modelDir = model.modelDir;
    this.#spec = model.spec;
    this.#tokenizers = model.tokenizers;
    this.#scheduler = model.scheduler;
    this.#loras = loras;
    this.#residency = residency;
    this.loraAdmin = this.#loraPort();
  }

  /** Starts the first engine and fixes the model info from its answers. */
  async start(): Promise<void> {
    const client = await this.#engine();
    const card = await client.info();
    const name = this.#modelDir.split(/[\\/]/).filter(Boolean).pop() ?? this.#modelDir;
    this.#info = {
      name,
      path: this.#modelDir,
      capabilities: {
        // original, XL (its bf16 branch outputs), L and M (planned on this engine) and S (cuda-modes.ts).
        modes: this.#modes.map((m) => m.mode),
        ...(this.#modes.unavailable.length > 0 ? { unavailable: this.#modes.unavailable.map((u) => ({ ...u })) } : {}),
        // LoRA sets per request, applied by the engine at run time (cuda-lora.ts), BFL Control LoRAs with a control
        // image included (cuda-control.ts).
        lora: true,
        control: true,
        // img2img, inpainting and true CFG: the engine's VAE encoder, blend and negative branch (see the file header).
        edit: true,
        maxSide: MAX_SIDE,
        maxBatch: this.#maxBatch,
      },
      device: `cuda: ${card.device} (${this.#precision})`,
      engine: 'cuda',
      packedChannels: PACKED_CHANNELS,
      pixelsPerToken: 16,
      benchmarks: this.#o.benchResults ? readCudaBenchmarks(this.#o.benchResults, this.#precision, this.#o.onLog) : [],
      ...(this.#modePlans ? { modePlans: this.#modePlans } : {}),
    };
  }

  info(): ModelInfo {
    if (!this.#info) throw new Error('CUDA executor not started');
    return this.#info;
  }

  /** Not ready from an engine's unasked exit until its successor has loaded the model (`/readyz`, workers). */
  health(): EngineHealth {
    return this.#closed ? { ready: false, reason: 'the CUDA executor is closed' } : this.#health;
  }

  onHealth(listener: (health: EngineHealth) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #setHealth(h: EngineHealth): void {
    this.#health = h;
    for (const l of this.#listeners) l(h);
  }

  async engineInfo(): Promise<CudaEngineInfo> {
    return (await this.#engine()).info();
  }

  enginePid(): number | undefined {
    return this.#current?.exitError ? undefined : this.#current?.pid;
  }

  // ---- engine life cycle -------------------------------------------------------------------------------------

  /** The running, loaded engine; starts one when there is none. */
  #engine(): Promise<CudaEngineClient> {
    if (this.#closed) return Promise.reject(new Error('the CUDA executor is closed'));
    this.#ready ??= this.#startEngine();
    return this.#ready;
  }

  #startEngine(): Promise<CudaEngineClient> {
    let loaded = false;
    const client = CudaEngineClient.start({
      bin: this.#o.engineBin,
      ...(this.#o.env ? { env: this.#o.env } : {}),
      ...(this.#o.onLog ? { onLog: this.#o.onLog } : {}),
      onExit: (err) => this.#onExit(client, loaded, err),
    });
    this.#starts++;
    this.#current = client;
    const ready = (async () => {
      try {
        const card = await client.info();
        // The first start decides the planned modes before loading, so the serving engine loads once with them.
        if (!this.#planned) {
          await this.#planModes(card);
          this.#planned = true;
        }
        const l = await client.load(this.#spec, this.#precision, {
          ...(this.#o.loraMaxMb !== undefined ? { loraMaxMb: this.#o.loraMaxMb } : {}),
          plans: cudaLoadPlans(this.#modes),
        });
        const plans = l.plans.map((p) => `plan ${p.name}: ${p.layers} layers, ${(p.bytes / 2 ** 20).toFixed(1)} MiB`);
        this.#o.onLog?.(
          `CUDA engine pid ${client.pid} loaded ${this.#modelDir} (${this.#spec.layout}, ${l.precision}, ${(l.weightsBytes / 2 ** 20).toFixed(1)} MiB of weights${plans.map((p) => `; ${p}`).join('')}) on ${l.device} in ${l.ms.toFixed(0)} ms`,
        );
        loaded = true;
        this.#setHealth({ ready: true });
        return client;
      } catch (err) {
        client.kill('SIGKILL');
        this.#setHealth({ ready: false, reason: `the CUDA engine could not start: ${(err as Error).message}` });
        throw err;
      }
    })();
    // A failed start is not retried here: the next call starts another (no restart loop on a broken setup).
    ready.catch(() => {
      if (this.#ready === ready) this.#ready = undefined;
    });
    return ready;
  }

  /** The planned modes (`cuda-mode-planning.ts`, shared with `fluxql compile --engine cuda`); never throws. */
  async #planModes(card: CudaEngineInfo): Promise<void> {
    const planning = await planCudaModes(
      {
        engineBin: this.#o.engineBin,
        precision: this.#precision,
        ...(this.#o.cacheDir ? { cacheDir: this.#o.cacheDir } : {}),
        ...(this.#o.loraMaxMb !== undefined ? { loraMaxMb: this.#o.loraMaxMb } : {}),
        ...(this.#o.plannerFp8row ? { fp8row: true } : {}),
        ...(this.#o.env ? { env: this.#o.env } : {}),
        ...(this.#o.onLog ? { onLog: this.#o.onLog } : {}),
      },
      this.#model,
      card,
    );
    this.#modes = planning.modes;
    this.#modePlans = planning.modePlans;
  }

  #onExit(client: CudaEngineClient, wasLoaded: boolean, err: CudaEngineExitedError): void {
    if (this.#closed) return;
    // A process that never started is reported by the failed start itself.
    if (client.pid === undefined) return;
    this.#exits++;
    this.#o.onLog?.(`CUDA engine pid ${client.pid} ended: ${err.message}`);
    for (const s of this.#samples.values()) if (s.job.client === client) s.job.lost ??= err;
    for (const job of this.#jobs) if (job.client === client) this.#jobs.delete(job);
    if (this.#current !== client) return;
    this.#ready = undefined;
    this.#current = undefined;
    this.#setHealth({ ready: false, reason: `the CUDA engine died (${err.message}); restarting` });
    // Restart at once so the next request finds a loaded engine; only after an engine that had loaded, so a
    // setup that cannot load does not spin.
    if (wasLoaded) {
      this.#engine().catch((e: unknown) => {
        if (!this.#closed) this.#o.onLog?.(`CUDA engine restart failed: ${(e as Error).message}`);
      });
    }
  }

  // ---- StepExecutor ------------------------------------------------------------------------------------------

  async prepare(requests: SampleRequest[]): Promise<SampleHandle[]> {
    if (requests.length === 0) return [];
    // The LoRA set of each request (its own, or the default set now), parsed and checked before the engine is asked.
    const checked = requests.map((r) => {
      const grid = this.#validate(r);
      const loras = this.#loras.resolve(r.loras ?? this.#loras.activeSet());
      this.#residency.check(loras);
      // A BFL Control LoRA in the set needs a control image, and a control image needs one (ONNX's checks).
      const control = controlChannelsOf(loras, PACKED_CHANNELS) > 0;
      checkControlRequest(r.controlImage, control ? PACKED_CHANNELS : 0);
      // The mode's engine plan and step caching (unknown modes are refused here, as the service would).
      const mode = cudaModeOf(this.#modes, r.mode);
      const stepCache = mode.stepCache ?? this.#o.stepCache;
      return {
        r,
        grid,
        loras,
        control,
        plan: mode.plan,
        branchBf16: mode.branchBf16 === true,
        stepCache,
        loraKey: loraSetKey(selectionOf(loras)),
      };
    });
    const client = await this.#engine();
    // One engine job runs one schedule (steps and, for img2img / inpainting, the cut), one edit kind and true CFG for
    // all its samples or none, one LoRA set and one mode (its precision plan and step caching).
    const groups = groupBy(
      checked,
      ({ r, grid, loraKey }) =>
        `${grid.h}x${grid.w}|${r.steps}|${r.maxSequenceLength ?? this.#tokenizers.defaultT5Length}|` +
        `${startOf(r)}|${r.image ? (r.mask ? 'inpaint' : 'img2img') : 'text'}|${usesTrueCfg(r) ? 'cfg' : ''}|` +
        `${r.mode ?? REFERENCE_MODE}|${loraKey}`,
    ).flatMap((g) =>
      // True CFG runs 2B transformer rows: half the batch keeps the engine's largest batch.
      chunks(g, usesTrueCfg(g[0]!.r) ? Math.max(1, Math.floor(this.#maxBatch / 2)) : this.#maxBatch),
    );
    const handles = new Map<SampleRequest, SampleHandle>();
    const made: { job: EngineJob; joined: boolean; samples: Map<SampleHandle, Sample> }[] = [];
    const settled = await Promise.allSettled(
      groups.map(async (group) => {
        const first = group[0]!;
        const { grid } = first;
        const b = group.length;
        const t5Len = first.r.maxSequenceLength ?? this.#tokenizers.defaultT5Length;
        const cfg = usesTrueCfg(first.r);
        // True CFG: the negative prompts follow the prompts (2B rows), for CLIP and T5 alike.
        const negatives = cfg ? group.map((x) => x.r.negativePrompt!) : [];
        const clipIds = Int32Array.from(
          this.#tokenizers.encodeClip([...group.map((x) => x.r.prompt), ...negatives]),
          Number,
        );
        const t5Ids = Int32Array.from(
          this.#tokenizers.encodeT5([...group.map((x) => x.r.prompt2 ?? x.r.prompt), ...negatives], t5Len),
          Number,
        );
        const full = fluxSigmas(first.r.steps, grid.seqLen, this.#scheduler);
        const sigmas = full.sigmas.slice(startOf(first.r));
        const per = grid.seqLen * PACKED_CHANNELS;
        const latents = new Float32Array(b * per);
        const edits: EditState[] = [];
        // BFL Control: the samples' packed control latents [B, L, 64] (the whole group holds one set: all or none).
        const control = first.control ? new Float32Array(b * per) : undefined;
        for (const [i, { r }] of group.entries()) {
          if (control) {
            const s = await cudaControlSample({
              image: r.controlImage!,
              seed: r.seed,
              grid,
              height: r.height,
              width: r.width,
              latentChannels: LATENT_CHANNELS,
              encode: (pixels, eps, height, width) => cudaEncode(client, { batch: 1, height, width, pixels, eps }),
              ...(r.latents ? { latents: r.latents } : {}),
            });
            control.set(s.control, i * per);
            latents.set(s.latents, i * per);
          } else if (r.image) {
            // The engine's encoder samples the posterior with the normals drawn here (edit.ts draws them).
            const { latents: start, edit } = await prepareEditSample({
              request: r,
              grid,
              encoder: (pixels, eps, height, width) =>
                cudaEncode(client, { batch: 1, height, width, pixels, eps: Float32Array.from(eps) }),
              latentChannels: LATENT_CHANNELS,
              vaeScaleFactor: 8,
              scalingFactor: this.#vae.scaling,
              shiftFactor: this.#vae.shift,
              sigma0: sigmas[0]!,
            });
            latents.set(start, i * per);
            edits.push(edit);
          } else {
            latents.set(r.latents ?? packLatents(noiseOf(r, grid), 1, LATENT_CHANNELS, grid.h, grid.w), i * per);
          }
        }
        const inpaint = first.r.mask ? stackEdits(edits, per) : undefined;
        // The job's LoRA set: its members on the engine first (loaded once per engine process).
        await this.#residency.ensure(client, first.loras);
        const args = {
          loras: selectionOf(first.loras),
          batch: b,
          height: first.r.height,
          width: first.r.width,
          clipIds,
          t5Ids,
          t5Len,
          sigmas,
          guidance: group.map((x) => x.r.guidanceScale),
          latents,
          ...(first.plan !== undefined ? { plan: first.plan } : {}),
          ...(first.branchBf16 ? { branchBf16: true } : {}),
        };
        const steps = sigmas.length - 1;
        // Plain text-to-image without step caching: may join a running job of the same size, T5 length, LoRA set
        // and mode (its precision plan's weights are baked into the job's step, as the set's are). A caching job
        // gets no join key, so no group joins it (the engine refuses joins into one).
        const joinKey =
          cfg || inpaint || control || first.r.image || first.stepCache
            ? undefined
            : `${grid.h}x${grid.w}|${t5Len}|${first.loraKey}|${first.plan ?? ''}|${first.branchBf16 ? 'bf16' : ''}`;
        const host = joinKey ? this.#joinable(client, joinKey, b) : undefined;
        let job: EngineJob;
        let ids: number[];
        if (host) {
          host.reserved += b;
          try {
            ids = (
              await client.join(host.id, args).catch((err: unknown) => {
                throw loraErrorOf(err);
              })
            ).added;
          } finally {
            host.reserved -= b;
          }
          job = host;
          // The job now runs at least until this group's last step.
          job.steps = Math.max(job.steps, job.step + steps);
        } else {
          const prepared = await (cfg || inpaint || control
            ? cudaPrepareEdit(client, {
                ...args,
                ...(first.stepCache ? { stepCache: first.stepCache } : {}),
                ...(cfg ? { trueCfg: group.map((x) => x.r.trueCfgScale!) } : {}),
                ...(inpaint ? { inpaint } : {}),
                ...(control ? { control } : {}),
              })
            : client.prepare({ ...args, ...(first.stepCache ? { stepCache: first.stepCache } : {}) })
          ).catch((err: unknown) => {
            throw loraErrorOf(err);
          });
          job = {
            client,
            id: prepared.job,
            grid,
            height: first.r.height,
            width: first.r.width,
            steps: prepared.steps,
            step: 0,
            live: new Map(),
            reserved: 0,
            ...(joinKey ? { joinKey } : {}),
          };
          this.#jobs.add(job);
          ids = group.map((_, i) => i); // prepare's samples are 0..B-1
        }
        const part = { job, joined: host !== undefined, samples: new Map<SampleHandle, Sample>() };
        made.push(part);
        group.forEach((x, i) => {
          const h = randomUUID();
          part.samples.set(h, { job, id: ids[i]!, step: 0, steps });
          handles.set(x.r, h);
        });
      }),
    );
    const failed = settled.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (failed) {
      // All or nothing: free what this call added (new jobs whole, joined samples alone) before failing the call.
      await Promise.all(
        made.map(({ job, joined, samples }) =>
          (joined
            ? job.client.release(
                job.id,
                [...samples.values()].map((x) => x.id),
              )
            : job.client.release(job.id)
          )
            .catch(() => undefined)
            .finally(() => {
              if (!joined) this.#jobs.delete(job);
            }),
        ),
      );
      throw failed.reason;
    }
    for (const { job, joined, samples } of made) {
      // Counted once the call succeeded: a failed call released what it added.
      if (joined) this.#joinedSamples += samples.size;
      else this.#engineJobs++;
      for (const [h, sample] of samples) {
        job.live.set(h, sample);
        this.#samples.set(h, sample);
      }
    }
    return requests.map((r) => handles.get(r)!);
  }

  /** A live plain job of this engine with the same join key and room for `b` more samples, if any. */
  #joinable(client: CudaEngineClient, key: string, b: number): EngineJob | undefined {
    for (const job of this.#jobs) {
      if (job.client !== client || job.lost || job.joinKey !== key || job.live.size === 0) continue;
      if (job.live.size + job.reserved + b <= this.#maxBatch) return job;
    }
    return undefined;
  }

  async step(
    handles: SampleHandle[],
    options?: { preview?: boolean },
  ): Promise<(StepResult & { preview?: RgbImage })[]> {
    const samples = handles.map((h) => this.#sample(h));
    const jobs = [...new Set(samples.map((s) => s.job))];
    for (const job of jobs) {
      const asked = new Set(handles.filter((h) => this.#samples.get(h)!.job === job));
      const skipped = [...job.live].filter(([h, s]) => !asked.has(h) && s.step < s.steps);
      if (skipped.length > 0) {
        throw new Error(
          `CUDA executor: samples of one engine batch step together; ${skipped.length} live sample(s) of the batch were not named`,
        );
      }
    }
    const latents = new Map<EngineJob, Map<number, Float32Array>>();
    await Promise.all(
      jobs.map(async (job) => {
        if ([...job.live.values()].some((s) => s.step < s.steps)) {
          const p = await job.client.step(job.id, 1);
          job.step = p.step;
          job.steps = p.steps;
          const byId = new Map((p.samples ?? []).map((x) => [x.id, x]));
          for (const s of job.live.values()) {
            const e = byId.get(s.id);
            // An engine without per-sample fields: every sample of its jobs shares the schedule.
            s.step = e ? e.step : Math.min(s.steps, p.step);
          }
          if (p.stepCache) {
            // The engine reports the job's totals: add what this call ran.
            this.#cacheStats.full += p.stepCache.full - (job.cache?.full ?? 0);
            this.#cacheStats.cached += p.stepCache.cached - (job.cache?.cached ?? 0);
            job.cache = p.stepCache;
          }
        }
        if (options?.preview) {
          const ids = samples.filter((s) => s.job === job).map((s) => s.id);
          const lat = (await job.client.latents(job.id, ids)).data;
          const per = job.grid.seqLen * PACKED_CHANNELS;
          latents.set(job, new Map(ids.map((id, i) => [id, lat.subarray(i * per, (i + 1) * per)])));
        }
      }),
    );
    return samples.map((s, i) => {
      const lat = latents.get(s.job)?.get(s.id);
      return {
        handle: handles[i]!,
        step: s.step,
        totalSteps: s.steps,
        ...(lat ? { preview: latentPreviewRgb(lat, s.job.grid.h, s.job.grid.w) } : {}),
      };
    });
  }

  async decode(handles: SampleHandle[]): Promise<RgbImage[]> {
    const samples = handles.map((h) => this.#sample(h));
    const jobs = [...new Set(samples.map((s) => s.job))];
    // One engine decode per job, of the named samples only (in the order asked).
    const images = new Map<Sample, RgbImage>();
    await Promise.all(
      jobs.map(async (job) => {
        const mine = [...new Set(samples.filter((s) => s.job === job))];
        const img = await job.client.decode(
          job.id,
          mine.map((s) => s.id),
        );
        const per = img.height * img.width * 3;
        for (const [i, s] of mine.entries()) {
          images.set(s, { width: img.width, height: img.height, data: img.data.slice(i * per, (i + 1) * per) });
        }
      }),
    );
    return samples.map((s) => images.get(s)!);
  }

  async release(handles: SampleHandle[]): Promise<void> {
    const gone = new Map<EngineJob, number[]>();
    for (const h of handles) {
      const s = this.#samples.get(h);
      if (!s) continue;
      this.#samples.delete(h);
      s.job.live.delete(h);
      gone.set(s.job, [...(gone.get(s.job) ?? []), s.id]);
    }
    await Promise.all(
      [...gone].map(async ([job, ids]) => {
        const whole = job.live.size === 0;
        if (whole) this.#jobs.delete(job);
        // A job other than plain text-to-image keeps released samples until its last one goes (the engine cannot
        // compact it); a plain job drops them now.
        if (!whole && !job.joinKey) return;
        if (job.lost || job.client.exitError) return;
        await job.client.release(job.id, whole ? undefined : ids).catch((err: unknown) => {
          // The engine died meanwhile (its memory went with it) or already forgot the job: nothing to free.
          this.#o.onLog?.(`CUDA engine release of job ${job.id} failed: ${(err as Error).message}`);
        });
      }),
    );
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#samples.clear();
    this.#jobs.clear();
    const client = this.#current;
    this.#current = undefined;
    this.#ready = undefined;
    await client?.quit();
  }

  async stats(): Promise<ExecutorStats> {
    return {
      sessionsCreated: 0,
      engineStarts: this.#starts,
      engineExits: this.#exits,
      engineJobs: this.#engineJobs,
      joinedSamples: this.#joinedSamples,
      ...(this.#o.stepCache || this.#modes.some((m) => m.stepCache)
        ? { stepCache: { threshold: this.#o.stepCache?.threshold ?? null, ...this.#cacheStats } }
        : {}),
    };
  }

  // ---- LoRA administration -----------------------------------------------------------------------------------

  /** The ONNX executor's LoRA port over this engine: the same manager, errors and default set (see the header). */
  #loraPort(): LoraAdminPort {
    const manager = this.#loras;
    const onEngine = async (set: readonly LoraSelection[]) => {
      const active = manager.resolve(set);
      this.#residency.check(active);
      // Loading validates the factors against the engine's layers (shapes, names) as a job would.
      await this.#residency.ensure(await this.#engine(), active);
    };
    return {
      loras: async () => manager.scan(),
      checkLoras: async (set: LoraSelection[], mode?: string): Promise<LoraInfo[]> => {
        checkMode(
          mode,
          this.#modes.map((m) => m.mode),
        );
        const infos = set.map((s) => manager.info(s.name));
        await onEngine(set.map((s, i) => ({ name: infos[i]!.name, strength: s.strength })));
        return infos;
      },
      loadLora: async (name: string, strength: number): Promise<LoraInfo> => {
        const lora = manager.info(name);
        // The default set as it would become, checked (and its members loaded) before it changes.
        const current = manager.activeSet();
        const next: LoraSelection[] = current.some((s) => s.name === lora.name)
          ? current.map((s) => (s.name === lora.name ? { name: s.name, strength } : s))
          : [...current, { name: lora.name, strength }];
        await onEngine(next);
        return manager.load(lora.name, strength);
      },
      unloadLora: async (name: string): Promise<boolean> => {
        const was = manager.unload(name);
        // Its GPU memory goes too (jobs prepared with it keep their own copy until released).
        const client = this.#current;
        if (was && client && !client.exitError) {
          await this.#residency.unload(client, loraFileName(name)).catch((err: unknown) => {
            this.#o.onLog?.(`CUDA engine lora_unload ${name} failed: ${(err as Error).message}`);
          });
        }
        return was;
      },
      activeLoras: async () => manager.activeSet(),
    };
  }

  // ---- helpers -----------------------------------------------------------------------------------------------

  #sample(h: SampleHandle): Sample {
    const s = this.#samples.get(h);
    if (!s) throw new UnknownHandleError(h);
    if (s.job.lost) throw new CudaSampleLostError(h, s.job.lost);
    return s;
  }

  /**
   * What the engine needs to build its job: the latent grid and latents of the right length (every executor's
   * checks, `sample-checks.ts`). Modes, LoRAs, control images and the largest side are the service's checks, from
   * `capabilities`.
   */
  #validate(r: SampleRequest): LatentGrid {
    const grid = checkSampleRequest(r, PACKED_CHANNELS);
    checkEditRequest(r);
    return grid;
  }

  /** The VAE's latent scaling of the loaded model (the engine applies it in `encode`; kept for the edit input). */
  get #vae(): { scaling: number; shift: number } {
    const c = this.#spec.components.vae?.config ?? {};
    const scaling = typeof c.scaling_factor === 'number' ? c.scaling_factor : FLUX_VAE_SCALING;
    const shift = typeof c.shift_factor === 'number' ? c.shift_factor : FLUX_VAE_SHIFT;
    return { scaling, shift };
  }
}

/** The first schedule index a request runs: img2img / inpainting run the last `strength` share (edit.ts). */
function startOf(r: SampleRequest): number {
  return r.image ? editStartIndex(r.steps, r.strength ?? DEFAULT_STRENGTH) : 0;
}

/** The starting noise `[16, h, w]` of a text-to-image sample: its own generator, or its share of a batch's one. */
function noiseOf(r: SampleRequest, grid: LatentGrid): Float32Array {
  const g = r.sharedGenerator;
  if (!g) return noiseForSeeds([r.seed], LATENT_CHANNELS, grid.h, grid.w);
  const n = LATENT_CHANNELS * grid.h * grid.w;
  return new TorchCpuGenerator(r.seed).randn(g.batch * n).slice(g.index * n, (g.index + 1) * n);
}

/** The inpainting inputs of a job, each `[B, L, 64]`: the samples' image latents, noise and mask stacked. */
function stackEdits(
  edits: readonly EditState[],
  per: number,
): { imageLatents: Float32Array; noise: Float32Array; mask: Float32Array } {
  const out = {
    imageLatents: new Float32Array(edits.length * per),
    noise: new Float32Array(edits.length * per),
    mask: new Float32Array(edits.length * per),
  };
  edits.forEach((e, i) => {
    out.imageLatents.set(e.imageLatents, i * per);
    out.noise.set(e.noise, i * per);
    out.mask.set(e.mask!, i * per);
  });
  return out;
}

/** A resolved set as names (canonical) and strengths, in order. */
function selectionOf(set: readonly ActiveLora[]): LoraSelection[] {
  return set.map((m) => ({ name: m.name, strength: m.strength }));
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
