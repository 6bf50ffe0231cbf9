/**
 * @file The engine manifest: what a compiled engine is made of (one ONNX file per component), what it was compiled
 * from, and the facts the pipeline needs to drive it. Written by `engines/compiler`, read here; a malformed or
 * inconsistent manifest fails at start-up, never on the first request.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';

const ioSchema = z.object({
  name: z.string(),
  dtype: z.string(),
  dims: z.array(z.union([z.number(), z.string()])),
});

const componentSchema = z.object({
  /** ONNX file, relative to the manifest. */
  file: z.string(),
  /** Cache key of the component build (weights fingerprint + options + compiler version). */
  key: z.string(),
  inputs: z.array(ioSchema),
  outputs: z.array(ioSchema),
});

/** Per-layer choice of the elastic-mode planner (empty for `original`). */
const planEntrySchema = z.object({
  layer: z.string(),
  algorithm: z.string(),
  error: z.number().optional(),
  gainMs: z.number().optional(),
});

export const manifestSchema = z.object({
  format: z.literal('fluxql-engine/1'),
  /** Elastic mode: `original`, `XL`, `L`, `M`, `S`. */
  mode: z.string(),
  precision: z.enum(['fp32', 'fp16', 'bf16']),
  compilerVersion: z.string(),
  createdAt: z.string(),
  model: z.object({ name: z.string(), path: z.string() }),
  components: z.object({
    clip: componentSchema,
    t5: componentSchema,
    transformer: componentSchema,
    vae: componentSchema,
  }),
  /** Model facts the pipeline needs (from the component configs). */
  config: z.object({
    inChannels: z.number().int().positive(),
    outChannels: z.number().int().positive(),
    axesDimsRope: z.array(z.number().int().positive()),
    guidanceEmbeds: z.boolean(),
    jointAttentionDim: z.number().int().positive(),
    pooledProjectionDim: z.number().int().positive(),
    latentChannels: z.number().int().positive(),
    vaeScaleFactor: z.number().int().positive(),
    scalingFactor: z.number(),
    shiftFactor: z.number(),
    clipMaxLength: z.number().int().positive(),
  }),
  plan: z.array(planEntrySchema).default([]),
  /** Compressed modes: the plan's budget and its predicted / measured error (see engines/compiler/planner). */
  planSummary: z
    .object({
      budget: z.number(),
      predictedError: z.number(),
      measuredError: z.number(),
      gainMs: z.number(),
      calibration: z.record(z.string(), z.union([z.number(), z.string()])),
    })
    .optional(),
  /** Mode S: the transformer split after its first block, for step caching (First-Block-Cache). */
  stepCache: z
    .object({
      threshold: z.number().nonnegative(),
      warmupSteps: z.number().int().nonnegative(),
      maxConsecutive: z.number().int().nonnegative(),
      /** Calibration target: images within this PSNR (dB) of the same engine without skipping. */
      minPsnr: z.number().optional(),
      head: componentSchema,
      tail: componentSchema,
    })
    .optional(),
  /**
   * Mode XL: the `transformer_modulation` component (inputs `timestep`, `guidance`, `pooled_projections` `[N]`;
   * output `modulation` `[N, M]`); the transformer then takes `modulation` `[B, M]` instead of those inputs.
   */
  modulation: componentSchema.optional(),
});

export type EngineManifest = z.infer<typeof manifestSchema>;
export type ComponentName = keyof EngineManifest['components'];
export const COMPONENTS: readonly ComponentName[] = ['clip', 't5', 'transformer', 'vae'];

/** A manifest that cannot be used. */
export class ManifestError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`engine manifest ${path}: ${message}`);
    this.name = 'ManifestError';
  }
}

/** Reads and validates a manifest; checks that every component file exists. */
export function readManifest(path: string): EngineManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ManifestError(path, `cannot read JSON: ${(err as Error).message}`);
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ManifestError(path, `${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`);
  }
  for (const c of COMPONENTS) {
    const file = componentPath(path, parsed.data, c);
    if (!existsSync(file)) throw new ManifestError(path, `component ${c} file is missing: ${file}`);
  }
  for (const part of ['head', 'tail'] as const) {
    const entry = parsed.data.stepCache?.[part];
    if (entry && !existsSync(resolve(dirname(path), entry.file))) {
      throw new ManifestError(path, `step-cache ${part} file is missing: ${entry.file}`);
    }
  }
  const modulation = parsed.data.modulation;
  if (modulation && !existsSync(resolve(dirname(path), modulation.file))) {
    throw new ManifestError(path, `modulation component file is missing: ${modulation.file}`);
  }
  return parsed.data;
}

/** Absolute path of a component's ONNX file. */
export function componentPath(manifestPath: string, manifest: EngineManifest, component: ComponentName): string {
  return resolve(dirname(manifestPath), manifest.components[component].file);
}
