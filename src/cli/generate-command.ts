/** @file `fluxql generate`: one image from the command line, with a progress bar. */
import { writeFileSync } from 'node:fs';
import { extname } from 'node:path';
import { SingleBar } from 'cli-progress';
import { loadPipelineSettings } from '../config.ts';
import { FluxPipeline } from '../pipeline/flux/pipeline.ts';
import { encodeImage, type ImageFormat } from '../pipeline/image.ts';
import { parseProvider } from '../runtime/index.ts';
import { defaultSizeFor, parseIntOption, parseSize } from './defaults.ts';

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
  maxSequenceLength: string;
  provider: string;
}

const FORMATS: Record<string, ImageFormat> = { '.png': 'png', '.webp': 'webp', '.jpg': 'jpeg', '.jpeg': 'jpeg' };

export async function runGenerate(args: GenerateArgs): Promise<void> {
  const format = FORMATS[extname(args.out).toLowerCase()];
  if (!format) throw new Error(`--out must end in .png, .webp, .jpg or .jpeg, got "${args.out}"`);
  const { width, height } = parseSize(args.size ?? defaultSizeFor(args.model));
  const steps = parseIntOption('--steps', args.steps);
  const guidanceScale = Number(args.guidance);
  if (!Number.isFinite(guidanceScale)) throw new Error(`--guidance must be a number, got "${args.guidance}"`);
  const t0 = performance.now();
  const pipe = await FluxPipeline.fromPretrained(args.model, {
    ...loadPipelineSettings(),
    provider: parseProvider(args.provider),
    modes: [args.mode],
    onLog: (m) => process.stderr.write(`${m}\n`),
  });
  const t1 = performance.now();
  const bar = new SingleBar({
    format: 'denoising [{bar}] {value}/{total} steps | {duration_formatted} | eta {eta_formatted}',
  });
  bar.start(steps, 0);
  const result = await pipe.generate({
    prompt: args.prompt,
    width,
    height,
    steps,
    guidanceScale,
    seed: parseIntOption('--seed', args.seed),
    mode: args.mode,
    maxSequenceLength: parseIntOption('--max-sequence-length', args.maxSequenceLength),
    onStep: (step) => bar.update(step),
  });
  bar.stop();
  writeFileSync(args.out, await encodeImage(result.images[0]!, { format }));
  await pipe.close();
  const t2 = performance.now();
  process.stderr.write(
    `wrote ${args.out} (${width}x${height}, ${steps} steps): load ${((t1 - t0) / 1000).toFixed(2)} s, generate ${((t2 - t1) / 1000).toFixed(2)} s\n`,
  );
}
