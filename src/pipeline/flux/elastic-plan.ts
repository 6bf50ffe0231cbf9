/**
 * @file Plans of the compressed modes (L, M, S) for one model, computed on first use and cached on disk beside the
 * engines: `<cacheDir>/plans/<model>-<key>.json` holds the per-layer measurements and the plan of every planned
 * mode, so the measurements (the expensive part) run once per model and serve all three budgets.
 *
 * Calibration inputs are real transformer inputs: two prompts through this pipeline's `original` engine, latents
 * recorded after 1 and 3 of 8 denoising steps (one sample each, so early and mid-trajectory inputs are both seen),
 * at a small size (64×64 pixels, 32 text tokens) to keep the hundreds of calibration forwards affordable on two
 * cores. Layer times are priced at the CPU benchmark's token counts (128×128 pixels: 64 image tokens, 64 text tokens).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostTensor } from '../../runtime/index.ts';
import { isPlannedMode, MODE_NAMES, type ModeSpec, resolveMode } from '../../shared/vocabulary/modes.ts';
import type { ModePlan } from '../../shared/vocabulary/plan-types.ts';
import type { ComponentWeights } from '../../shared/weights/index.ts';
import type { EngineCompilerPort } from './compiler-port.ts';
import type { SampleState } from './sample-state.ts';

/** Bump when measurement or planning changes in a way that must invalidate cached plans. */
export const PLANNER_VERSION = '1';

/** Calibration and timing sizes (see the file header). */
export const CALIBRATION = {
  prompts: ['A photograph of a red fox in a snowy forest at dawn', 'an oil painting of a lighthouse in a storm'],
  size: 64,
  textTokens: 32,
  steps: 8,
  /** Steps after which each prompt's latents are recorded (one per prompt). */
  recordAfter: [1, 3],
  timing: { image: 64, text: 64 },
} as const;

/** What the pipeline lends the planner: its original engine, through these calls, and its compiler. */
export interface CalibrationSource {
  readonly source: { name: string; repo: { components: { transformer: ComponentWeights } } };
  readonly compiler: Pick<EngineCompilerPort, 'version' | 'planModes'>;
  prepare(
    requests: {
      prompt: string;
      height: number;
      width: number;
      steps: number;
      guidanceScale: number;
      seed: number;
      maxSequenceLength: number;
    }[],
  ): Promise<SampleState[]>;
  step(samples: SampleState[]): Promise<void>;
  transformerFeeds(group: SampleState[], mode: string): Promise<Record<string, HostTensor>>;
}

interface PlanFile {
  planner: string;
  /** The compiler's per-layer record (opaque here). */
  measurements: unknown;
  plans: Record<string, ModePlan>;
}

/** Where the plans of `pipe`'s model are cached under `cacheDir`. */
export function planPath(cacheDir: string, pipe: Pick<CalibrationSource, 'source' | 'compiler'>): string {
  const t = pipe.source.repo.components.transformer;
  const xl = resolveMode('XL').transformer;
  const key = createHash('sha256')
    .update(
      `${pipe.compiler.version}|${PLANNER_VERSION}|${t.fingerprint}|${JSON.stringify(xl)}|${JSON.stringify(CALIBRATION)}`,
    )
    .digest('hex')
    .slice(0, 16);
  // A hub model's name is `org/name`: keep it one file name.
  return join(cacheDir, 'plans', `${pipe.source.name.replaceAll('/', '--')}-${key}.json`);
}

/**
 * The plans already cached for `pipe`'s model under `cacheDir`, by mode (only those `ensurePlan` would reuse: a
 * planned mode with the same budget); `{}` without a cache file or when it cannot be read. Never plans.
 */
export function cachedPlans(
  pipe: Pick<CalibrationSource, 'source' | 'compiler'>,
  cacheDir: string,
): Record<string, ModePlan> {
  const path = planPath(cacheDir, pipe);
  if (!existsSync(path)) return {};
  let file: PlanFile;
  try {
    file = JSON.parse(readFileSync(path, 'utf8')) as PlanFile;
  } catch {
    return {};
  }
  const out: Record<string, ModePlan> = {};
  for (const spec of MODE_NAMES.map(resolveMode).filter(isPlannedMode)) {
    const plan = file.plans?.[spec.name];
    if (plan && plan.budget === spec.errorBudget) out[spec.name] = plan;
  }
  return out;
}

/** Calibration feeds: one batch of the recorded samples (see the file header). */
async function calibrationFeeds(pipe: CalibrationSource): Promise<Record<string, HostTensor>> {
  const states = await pipe.prepare(
    CALIBRATION.prompts.map((prompt, i) => ({
      prompt,
      height: CALIBRATION.size,
      width: CALIBRATION.size,
      steps: CALIBRATION.steps,
      guidanceScale: 3.5,
      seed: 1000 + i,
      maxSequenceLength: CALIBRATION.textTokens,
    })),
  );
  const recorded: SampleState[] = [];
  for (let step = 1; recorded.length < states.length; step++) {
    await pipe.step(states.filter((_, i) => step <= CALIBRATION.recordAfter[i]!));
    states.forEach((s, i) => {
      if (step === CALIBRATION.recordAfter[i]) recorded.push({ ...s, latents: Float32Array.from(s.latents) });
    });
  }
  return pipe.transformerFeeds(recorded, 'original');
}

/**
 * The plan of `mode` (undefined for modes without a budget), measuring and planning every planned mode on first use.
 * @param onLog progress lines (the first run takes minutes on the synthetic benchmark model)
 */
export async function ensurePlan(
  pipe: CalibrationSource,
  mode: ModeSpec,
  cacheDir: string,
  options: { threads?: number; onLog?: (m: string) => void } = {},
): Promise<ModePlan | undefined> {
  if (!isPlannedMode(mode)) return undefined;
  const path = planPath(cacheDir, pipe);
  if (existsSync(path)) {
    const file = JSON.parse(readFileSync(path, 'utf8')) as PlanFile;
    const plan = file.plans[mode.name];
    if (plan && plan.budget === mode.errorBudget) return plan;
  }
  options.onLog?.(`planning modes of ${pipe.source.name} (per-layer measurements, once per model)`);
  const feeds = await calibrationFeeds(pipe);
  const budgets = Object.fromEntries(
    MODE_NAMES.map(resolveMode)
      .filter(isPlannedMode)
      .map((m) => [m.name, m.errorBudget!]),
  );
  const { measurements, plans } = await pipe.compiler.planModes({
    transformer: pipe.source.repo.components.transformer,
    graph: { ...resolveMode('XL').transformer },
    feeds,
    timing: CALIBRATION.timing,
    budgets,
    threads: options.threads,
    onLog: options.onLog,
  });
  const file: PlanFile = { planner: PLANNER_VERSION, measurements, plans };
  mkdirSync(join(cacheDir, 'plans'), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, JSON.stringify(file, null, 2));
  renameSync(tmp, path);
  return plans[mode.name];
}
