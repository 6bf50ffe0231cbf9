/** @file `fluxql generate`: one image from the command line, with a progress bar. */
import { readFileSync, writeFileSync } from 'node:fs';
import { extname } from 'node:path';
import { SingleBar } from 'cli-progress';
import { loadPipelineSettings } from '../config.ts';
import type { EngineCompilerPort } from '../pipeline/flux/compiler-port.ts';
import { FluxPipeline } from '../pipeline/flux/pipeline.ts';
import { parseProvider } from '../runtime/index.ts';
import { decodeImageBytes } from '../service/media/control-image.ts';
import { encodeImage, type ImageFormat } from '../service/media/image-codec.ts';
import { defaultSizeFor, parseIntOption, parseSize } from './defaults.ts';
import { UsageError } from './errors.ts';
import { resolveCliModel } from './model-path.ts';

interface GenerateArgs {
  prompt: string;
  out: string;
  model: string;
  /** Absent: the model's native size ({@link defaultSizeFor}). */
  size?: string;
  steps: string;
  guidance: string;
  seed: string;
  mode: string;
  maxSequenceLength?: string;
  provider: string;
  image?: string;
  mask?: string;
  strength: string;
  negativePrompt?: string;
  trueCfg: string;
}

const FORMATS: Record<string, ImageFormat> = { '.png': 'png', '.webp': 'webp', '.jpg': 'jpeg', '.jpeg': 'jpeg' };

export async function runGenerate(args: GenerateArgs, compiler: EngineCompilerPort): Promise<void> {
  const format = FORMATS[extname(args.out).toLowerCase()];
  if (!format) throw new UsageError(`--out must end in .png, .webp, .jpg or .jpeg, got "${args.out}"`);
  const { width, height } = parseSize(args.size ?? defaultSizeFor(args.model));
  const steps = parseIntOption('--steps', args.steps);
  const guidanceScale = Number(args.guidance);
  if (!Number.isFinite(guidanceScale)) throw new UsageError(`--guidance must be a number, got "${args.guidance}"`);
  const seed = parseIntOption('--seed', args.seed);
  const maxSequenceLength =
    args.maxSequenceLength === undefined ? undefined : parseIntOption('--max-sequence-length', args.maxSequenceLength);
  const strength = Number(args.strength);
  if (!(strength >= 0 && strength <= 1)) throw new UsageError(`--strength must be in [0, 1], got "${args.strength}"`);
  const trueCfgScale = Number(args.trueCfg);
  if (!Number.isFinite(trueCfgScale)) throw new UsageError(`--true-cfg must be a number, got "${args.trueCfg}"`);
  if (args.mask && !args.image) throw new UsageError('--mask needs --image');
  const readImage = (file: string, param: string) => decodeImageBytes(readFileSync(file), { param });
  const image = args.image ? await readImage(args.image, 'image') : undefined;
  const mask = args.mask ? await readImage(args.mask, 'mask') : undefined;
  const model = await resolveCliModel(args.model);
  const t0 = performance.now();
  const pipe = await FluxPipeline.fromPretrained(model, {
    compiler,
    ...loadPipelineSettings(),
    provider: parseProvider(args.provider),
    modes: [args.mode],
    onLog: (m) => process.stderr.write(`${m}\n`),
  });
  const t1 = performance.now();
  const progress = phaseProgress(steps);
  const result = await pipe.generate({
    prompt: args.prompt,
    width,
    height,
    steps,
    guidanceScale,
    seed,
    mode: args.mode,
    ...(maxSequenceLength !== undefined ? { maxSequenceLength } : {}),
    ...(image ? { image, strength } : {}),
    ...(mask ? { mask } : {}),
    ...(args.negativePrompt !== undefined ? { negativePrompt: args.negativePrompt, trueCfgScale } : {}),
    onPhase: progress.phase,
    onStep: progress.step,
  });
  progress.stop();
  writeFileSync(args.out, await encodeImage(result.images[0]!, { format }));
  await pipe.close();
  const t2 = performance.now();
  process.stderr.write(
    `wrote ${args.out} (${width}x${height}, ${steps} steps): load ${((t1 - t0) / 1000).toFixed(2)} s, generate ${((t2 - t1) / 1000).toFixed(2)} s\n`,
  );
}

/**
 * The phase shows where the time goes: text encoding, the denoising steps, then VAE decoding. On a terminal, one
 * progress bar labelled with the phase; elsewhere (logs, pipes) one line per phase, since a bar redrawn with
 * carriage returns is noise in a log file.
 */
function phaseProgress(steps: number) {
  if (!process.stderr.isTTY) {
    return {
      phase: (p: string) => process.stderr.write(`${p}${p === 'denoise' ? ` (${steps} steps)` : ''}\n`),
      step: () => {},
      stop: () => {},
    };
  }
  const bar = new SingleBar({
    format: '{phase} [{bar}] {value}/{total} steps | {duration_formatted} | eta {eta_formatted}',
  });
  bar.start(steps, 0, { phase: 'encode ' });
  return {
    phase: (p: string) => bar.update({ phase: p.padEnd(7) }),
    step: (step: number) => bar.update(step),
    stop: () => bar.stop(),
  };
}
