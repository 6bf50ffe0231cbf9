/**
 * @file The link between the LoRA layer and the compiled engines: reading a LoRA engine's input layout from its
 * manifest (the compiler records it beside the transformer's descriptor), and creating a {@link LoraManager} for a
 * model repository (its targetable layers from the config, its QK-norm weights read lazily).
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { LoraEngineLayout } from '../../shared/vocabulary/lora-layout.ts';
import type { FluxTransformerConfig } from '../../shared/vocabulary/transformer-config.ts';
import type { ModelRepo } from '../../shared/weights/index.ts';
import { LoraError } from './errors.ts';
import { LoraManager } from './lora-manager.ts';
import { loraModelSpec } from './model-layers.ts';

const layoutSchema = z.object({
  version: z.literal(1),
  layers: z.array(
    z.object({
      name: z.string(),
      inFeatures: z.number().int().positive(),
      outFeatures: z.number().int().positive(),
      parts: z
        .array(
          z.object({
            name: z.string(),
            offset: z.number().int().nonnegative(),
            outFeatures: z.number().int().positive(),
          }),
        )
        .optional(),
    }),
  ),
  norms: z.array(z.object({ module: z.string(), dim: z.number().int().positive() })),
  inChannels: z.number().int().positive(),
  baseInChannels: z.number().int().positive(),
});

/**
 * The LoRA input layout of the engine at `manifestPath` (`components.transformer.lora`).
 * @throws LoraError (`unsupported`) when the engine was compiled without LoRA support.
 */
export function readLoraLayout(manifestPath: string): LoraEngineLayout {
  const raw = JSON.parse(readFileSync(manifestPath, 'utf8')) as { components?: { transformer?: { lora?: unknown } } };
  const lora = raw.components?.transformer?.lora;
  if (lora === undefined) throw new LoraError('unsupported', `engine ${manifestPath} was compiled without LoRA inputs`);
  const parsed = layoutSchema.safeParse(lora);
  if (!parsed.success) {
    throw new LoraError('unsupported', `engine ${manifestPath}: bad LoRA layout: ${parsed.error.issues[0]?.message}`);
  }
  return parsed.data;
}

/** A manager for the transformer of `repo`, reading files from `loraDir`. */
export function createLoraManager(repo: ModelRepo, loraDir: string | undefined): LoraManager {
  const transformer = repo.components.transformer;
  const spec = loraModelSpec(transformer.config as FluxTransformerConfig);
  return new LoraManager({
    loraDir,
    spec,
    baseNorms: () => {
      const w = transformer.open();
      try {
        return new Map([...spec.norms.keys()].map((m) => [m, w.readF32(`${m}.weight`)]));
      } finally {
        w.close();
      }
    },
  });
}
