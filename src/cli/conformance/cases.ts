/**
 * @file The conformance cases: each compares one stage of the pipeline with the diffusers reference in a fixture
 * directory and yields `{name, metric, value, limit, ok}`. Limits are the fixture README's: token ids exact,
 * encoders / transformer / per-step latents within relative error 1e-4, decoded images within 2/255.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FluxPipeline, GenerateOptions } from '../../pipeline/flux/pipeline.ts';
import { stack } from '../../pipeline/flux/sample-state.ts';
import { maxAbsDiff, mismatches, relativeError } from '../../shared/tensor-metrics.ts';
import { openSafetensors, type SafetensorsFile } from '../../shared/weights/index.ts';
import { type FixtureIndex, type PipelineCase, tokenizerCaseSchema } from './fixture-index.ts';

/** One checked quantity. */
export interface CaseResult {
  name: string;
  metric: 'mismatched_ids' | 'rel_error' | 'max_abs_diff' | 'mismatched_values';
  value: number;
  limit: number;
  ok: boolean;
}

/** Tolerances; `rel` and `image` can be widened for optimised modes. */
export interface Limits {
  rel: number;
  image: number;
}
export const REFERENCE_LIMITS: Limits = { rel: 1e-4, image: 2 / 255 };

/** One checked quantity: ok when `value` is at most `limit`. */
export const result = (name: string, metric: CaseResult['metric'], value: number, limit: number): CaseResult => ({
  name,
  metric,
  value,
  limit,
  ok: value <= limit,
});

function withFile<T>(path: string, fn: (f: SafetensorsFile) => T): T {
  const f = openSafetensors(path);
  try {
    return fn(f);
  } finally {
    f.close();
  }
}

function readTokenizerCases(dir: string, index: FixtureIndex) {
  if (!index.tokenizer_cases) return [];
  const path = join(dir, index.tokenizer_cases);
  return tokenizerCaseSchema.parse(JSON.parse(readFileSync(path, 'utf8')));
}

/** What the fixture cases read: the pipeline under test, the fixture folder and its index, the mode, the limits. */
export interface FixtureRun {
  pipe: FluxPipeline;
  dir: string;
  index: FixtureIndex;
  mode: string;
  limits: Limits;
}

/** Token ids of every prompt, CLIP and T5, exact. */
export function tokenizerCases({ pipe, dir, index }: FixtureRun): CaseResult[] {
  return readTokenizerCases(dir, index).flatMap((c, i) => {
    const clip = pipe.tokenizers.encodeClip([c.prompt]);
    const t5 = pipe.tokenizers.encodeT5([c.prompt], c.t5_input_ids.length);
    return [
      result(`tokenizer[${i}].clip`, 'mismatched_ids', mismatches(clip, c.clip_input_ids), 0),
      result(`tokenizer[${i}].t5`, 'mismatched_ids', mismatches(t5, c.t5_input_ids), 0),
    ];
  });
}

/** CLIP pooled and T5 hidden states of every tokenizer prompt, in one batched run each. */
export async function textEncoderCases({ pipe, dir, index, mode, limits }: FixtureRun): Promise<CaseResult[]> {
  if (!index.text_encoders) return [];
  const prompts = readTokenizerCases(dir, index).map((c) => c.prompt);
  const { pooledRef, embedsRef, t } = withFile(join(dir, index.text_encoders), (f) => ({
    pooledRef: f.readF32('pooled_prompt_embeds'),
    embedsRef: f.readF32('prompt_embeds'),
    t: f.info('prompt_embeds').shape[1]!,
  }));
  const enc = await pipe.encodePrompts(prompts, prompts, t, mode);
  const p = pooledRef.length / prompts.length;
  const e = embedsRef.length / prompts.length;
  const outputs = [
    { name: 'clip_pooled', got: enc.pooled, ref: pooledRef, per: p },
    { name: 't5', got: enc.embeds, ref: embedsRef, per: e },
  ];
  return prompts.flatMap((_, i) =>
    outputs.map((o) =>
      result(
        `text_encoders[${i}].${o.name}`,
        'rel_error',
        relativeError(o.got[i]!, o.ref.subarray(i * o.per, (i + 1) * o.per)),
        limits.rel,
      ),
    ),
  );
}

/** One raw transformer forward. */
export async function transformerCase({ pipe, dir, index, mode, limits }: FixtureRun): Promise<CaseResult[]> {
  if (!index.transformer_case) return [];
  const path = join(dir, index.transformer_case.file);
  const out = await pipe.forwardTransformer(readTransformerInputs(path), mode);
  const expected = withFile(path, (f) => f.readF32('output'));
  return [result('transformer', 'rel_error', relativeError(out, expected), limits.rel)];
}

/** The raw transformer inputs of a fixture file (`hidden_states`, `encoder_hidden_states`, ... as diffusers names them). */
export function readTransformerInputs(path: string): Parameters<FluxPipeline['forwardTransformer']>[0] {
  return withFile(path, (f) => ({
    hidden: f.readF32('hidden_states'),
    encoder: f.readF32('encoder_hidden_states'),
    pooled: f.readF32('pooled_projections'),
    timestep: f.readF32('timestep'),
    guidance: f.names().includes('guidance') ? f.readF32('guidance') : undefined,
    txtIds: f.readF32('txt_ids'),
    imgIds: f.readF32('img_ids'),
  }));
}

/**
 * Runs `request` on `pipe` and compares it with the reference run in `f`: the latents after every step
 * (`latents_after_step_<i>`, relative error) and the decoded image (`image`, `[B, 3, H, W]`, max abs diff), named
 * `<name>.latents_after_step_<i>` and `<name>.image`. `optionalSteps`: a step the file does not hold is skipped
 * (the caller counts steps itself); otherwise it is an error. Returns the results and the number of steps run.
 */
export async function trajectoryCase(
  pipe: FluxPipeline,
  request: Omit<GenerateOptions, 'onStep'>,
  f: SafetensorsFile,
  name: string,
  limits: Limits,
  optionalSteps = false,
): Promise<{ results: CaseResult[]; stepsRun: number }> {
  const steps: Float32Array[] = [];
  const res = await pipe.generate({
    ...request,
    onStep: (_step, _total, latents) => {
      steps.push(stack(latents)); // [B, L, C]
    },
  });
  const has = new Set(f.names());
  const results = steps.flatMap((l, i) => {
    const key = `latents_after_step_${i}`;
    if (optionalSteps && !has.has(key)) return [];
    return [result(`${name}.${key}`, 'rel_error', relativeError(l, f.readF32(key)), limits.rel)];
  });
  const image = maxAbsDiff(stack(res.floatImages), f.readF32('image')); // [B, 3, H, W]
  results.push(result(`${name}.image`, 'max_abs_diff', image, limits.image));
  return { results, stepsRun: steps.length };
}

/** A whole generation from explicit starting noise: sigmas, every step's latents, the decoded image. */
export async function pipelineCase(
  pipe: FluxPipeline,
  dir: string,
  c: PipelineCase,
  n: number,
  mode: string,
  limits: Limits,
): Promise<CaseResult[]> {
  const f = openSafetensors(join(dir, c.file));
  try {
    const name = `pipeline[${n}]`;
    const request = {
      prompts: c.prompts,
      height: c.height,
      width: c.width,
      steps: c.steps,
      guidanceScale: c.guidance,
      latents: f.readF32('initial_latents_packed'),
      maxSequenceLength: c.max_sequence_length ?? 512,
      mode,
    };
    const { results } = await trajectoryCase(pipe, request, f, name, limits);
    const state = await pipe.prepareScheduleOnly(c.steps, c.height, c.width);
    return [result(`${name}.sigmas`, 'max_abs_diff', maxAbsDiff(state.sigmas, f.readF32('sigmas')), 1e-6), ...results];
  } finally {
    f.close();
  }
}
