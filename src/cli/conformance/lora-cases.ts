/**
 * @file The LoRA conformance cases: each fixture LoRA (diffusers, XLabs, kohya) at its strength against the
 * diffusers reference output (relative error), unloading restoring the base output bit for bit, and a BFL Control
 * LoRA constructed from the spec (biases, norm replacements) against the same LoRA merged into the weights.
 *
 * LoRA files are only read from a LoRA folder, so {@link prepareLoraDir} copies the fixture files and writes the
 * constructed one into a temporary folder that the conformance pipeline uses as its LORA_DIR.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FluxPipeline } from '../../pipeline/flux/pipeline.ts';
import { mismatches, relativeError } from '../../shared/tensor-metrics.ts';
import type { FluxTransformerConfig } from '../../shared/vocabulary/transformer-config.ts';
import { openSafetensors, writeSafetensors } from '../../shared/weights/index.ts';
import { type CaseResult, type FixtureRun, readTransformerInputs, result } from './cases.ts';
import type { FixtureIndex } from './fixture-index.ts';
import { makeBflControlLora, mergeBflControl, writeMergedModel } from './lora-reference.ts';

type Inputs = ReturnType<typeof readTransformerInputs>;

/** Name of the constructed BFL Control LoRA inside the LoRA folder, and its strength and rank. */
export const CONTROL_LORA = { file: 'constructed_bfl_control.safetensors', strength: 0.7, rank: 4 } as const;

/** A temporary LORA_DIR holding the fixture LoRAs and the constructed control LoRA; `dispose` removes it. */
export function prepareLoraDir(
  fixtures: string,
  index: FixtureIndex,
  model: string,
): { dir: string; dispose: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'fluxql-loras-'));
  for (const c of index.lora_cases) copyFileSync(join(fixtures, c.lora_file), join(dir, c.lora_file));
  writeSafetensors(
    join(dir, CONTROL_LORA.file),
    makeBflControlLora(transformerConfig(model), { rank: CONTROL_LORA.rank }),
  );
  return { dir, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

function transformerConfig(model: string): FluxTransformerConfig {
  return JSON.parse(readFileSync(join(model, 'transformer', 'config.json'), 'utf8')) as FluxTransformerConfig;
}

function readOutput(path: string): Float32Array {
  const f = openSafetensors(path);
  try {
    return f.readF32('output');
  } finally {
    f.close();
  }
}

/**
 * Every `lora_cases` entry through the server-wide default set (`load` → forward → `unload` → forward), the
 * control LoRA per request; `pipe` must read LoRAs from a folder made by {@link prepareLoraDir}.
 */
export async function loraCases(run: FixtureRun, model: string): Promise<CaseResult[]> {
  const { pipe, dir: fixtures, index, mode, limits } = run;
  const out: CaseResult[] = [];
  const inputsCache = new Map<string, Inputs>();
  const inputs = (file: string) => {
    const hit = inputsCache.get(file);
    if (hit) return hit;
    const v = readTransformerInputs(join(fixtures, file));
    inputsCache.set(file, v);
    return v;
  };
  for (const [i, c] of index.lora_cases.entries()) {
    const x = inputs(c.inputs);
    const base = await pipe.forwardTransformer(x, mode);
    pipe.loras.load(c.lora_file, c.strength);
    const withLora = await pipe.forwardTransformer(x, mode, pipe.loras.activeSet());
    pipe.loras.unload(c.lora_file);
    const after = await pipe.forwardTransformer(x, mode, pipe.loras.activeSet());
    const name = `lora[${i}].${c.format}`;
    out.push(result(name, 'rel_error', relativeError(withLora, readOutput(join(fixtures, c.expected))), limits.rel));
    out.push(result(`${name}.unload_restores_base`, 'mismatched_values', bitMismatches(after, base), 0));
  }
  // The constructed control LoRA runs with the fixture LoRAs (a directory without LoRA cases is not a LoRA suite).
  if (index.transformer_case && index.lora_cases.length > 0)
    out.push(...(await controlCase(run, inputs(index.transformer_case.file), model)));
  return out;
}

/** The constructed BFL Control LoRA against the merged-weights model (compiled as a plain engine of the same mode). */
async function controlCase({ pipe, mode, limits }: FixtureRun, x: Inputs, model: string): Promise<CaseResult[]> {
  const config = transformerConfig(model);
  const dir = mkdtempSync(join(tmpdir(), 'fluxql-merged-'));
  try {
    const lora = makeBflControlLora(config, { rank: CONTROL_LORA.rank });
    writeMergedModel(model, dir, config, mergeBflControl(model, config, lora, CONTROL_LORA.strength));
    const merged = await FluxPipeline.fromPretrained(dir, { compiler: pipe.compiler, modes: [mode] });
    let reference: Float32Array;
    try {
      reference = await merged.forwardTransformer(x, mode);
    } finally {
      await merged.close();
    }
    const base = await pipe.forwardTransformer(x, mode);
    const got = await pipe.forwardTransformer(x, mode, [{ name: CONTROL_LORA.file, strength: CONTROL_LORA.strength }]);
    const after = await pipe.forwardTransformer(x, mode);
    return [
      result('lora_bfl_control.vs_merged', 'rel_error', relativeError(got, reference), limits.rel),
      result('lora_bfl_control.unload_restores_base', 'mismatched_values', bitMismatches(after, base), 0),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Number of positions whose float32 bit patterns differ. */
function bitMismatches(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.max(a.length, b.length);
  return mismatches(
    new Uint32Array(a.buffer, a.byteOffset, a.length),
    new Uint32Array(b.buffer, b.byteOffset, b.length),
  );
}
