/**
 * @file The fixture directory format (`index.json` beside safetensors files), as the diffusers reference exporter
 * writes it. Parsed with zod so a malformed directory fails with the field named.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

const pipelineCase = z.object({
  file: z.string(),
  prompts: z.array(z.string()).min(1),
  height: z.number().int(),
  width: z.number().int(),
  steps: z.number().int(),
  guidance: z.number(),
  max_sequence_length: z.number().int().optional(),
});

const loraCase = z.object({
  lora_file: z.string(),
  format: z.string(),
  rank: z.number().int().optional(),
  strength: z.number(),
  alpha: z.number().nullable().optional(),
  inputs: z.string(),
  expected: z.string(),
});

export const fixtureIndexSchema = z.object({
  tokenizer_cases: z.string().optional(),
  text_encoders: z.string().optional(),
  pipeline_cases: z.array(pipelineCase).default([]),
  lora_cases: z.array(loraCase).default([]),
  transformer_case: z.object({ file: z.string() }).optional(),
});

export type FixtureIndex = z.infer<typeof fixtureIndexSchema>;
export type PipelineCase = z.infer<typeof pipelineCase>;
export type LoraCase = z.infer<typeof loraCase>;

/** One tokenizer case of `tokenizer_cases.json`. */
export const tokenizerCaseSchema = z.array(
  z.object({ prompt: z.string(), clip_input_ids: z.array(z.number().int()), t5_input_ids: z.array(z.number().int()) }),
);

/** Reads and validates `<dir>/index.json`. */
export function readFixtureIndex(dir: string): FixtureIndex {
  const path = join(dir, 'index.json');
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
  const parsed = fixtureIndexSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`${path}: ${issue?.path.join('.')}: ${issue?.message}`);
  }
  return parsed.data;
}
