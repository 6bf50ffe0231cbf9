/**
 * @file The `fluxql` command line: `generate`, `conformance`, `compile` and `serve`. Each command lives in its own
 * file; this one only declares them. `bin/fluxql.js`, the composition root, runs {@link runCli} with the engine
 * compiler (`engines/compiler/port.ts`), which `src/` never imports.
 */
import { Command, Option } from 'commander';
import { loadEngineChoice } from '../config.ts';
import type { EngineCompilerPort } from '../pipeline/flux/compiler-port.ts';
import { PACKAGE_VERSION } from '../shared/package-root.ts';
import {
  EXECUTION_PROVIDERS,
  isPlannedMode,
  MODE_NAMES,
  REFERENCE_MODE,
  resolveMode,
} from '../shared/vocabulary/index.ts';
import { DEFAULT_FIXTURES_DIR, DEFAULT_MODEL_DIR } from './defaults.ts';
import { formatEnvHelp } from './env-help.ts';
import { exitWithError, UsageError } from './errors.ts';
import { runServe } from './serve-command.ts';

// generate, conformance and compile run the ONNX pipeline: imported when one of them runs, so that `serve --engine
// cuda` never loads ONNX Runtime (its native library need not exist on a GPU machine; engines/cuda/scripts/pack-node.sh).
const runGenerate = async (...a: Parameters<typeof import('./generate-command.ts').runGenerate>) =>
  (await import('./generate-command.ts')).runGenerate(...a);
const runConformance = async (...a: Parameters<typeof import('./conformance-command.ts').runConformance>) =>
  (await import('./conformance-command.ts')).runConformance(...a);
const runCompile = async (...a: Parameters<typeof import('./compile-command.ts').runCompile>) =>
  (await import('./compile-command.ts')).runCompile(...a);
// `compile --engine cuda` plans the native engine's modes: like `serve --engine cuda`, no ONNX Runtime.
const runCudaCompile = async (...a: Parameters<typeof import('./cuda-compile-command.ts').runCudaCompile>) =>
  (await import('./cuda-compile-command.ts')).runCudaCompile(...a);

/** The modes the per-layer planner makes (L, M, S): what `compile --engine cuda` plans when no --mode is given. */
const PLANNED_MODES = MODE_NAMES.filter((m) => isPlannedMode(resolveMode(m)));

/** What the entry point hands the commands. */
export interface CliDeps {
  /** Builds engines for `generate`, `conformance` and `compile` (`serve`'s engine process brings its own). */
  compiler: EngineCompilerPort;
}

/** Parses `argv` (as `process.argv`) and runs the command; errors are printed and set the exit code. */
export async function runCli(argv: readonly string[], deps: CliDeps): Promise<void> {
  const program = new Command('fluxql')
    .description('FLUX.1 inference server and tools')
    .version(PACKAGE_VERSION, '-V, --version', 'print the version')
    .showHelpAfterError();
  const provider = new Option('--provider <name>', 'ONNX Runtime execution provider')
    .choices(EXECUTION_PROVIDERS)
    .default('cpu');

  program
    .command('generate')
    .description('generate an image from a prompt')
    .requiredOption('-p, --prompt <text>', 'prompt')
    .option('-o, --out <file>', 'output image (.png, .webp, .jpg)', 'out.png')
    .option(
      '-m, --model <dir>',
      'model: a folder (diffusers or BFL files) or a Hugging Face id org/name[@revision]',
      DEFAULT_MODEL_DIR,
    )
    .option('-s, --size <WxH>', 'image size, multiples of 16 (default: 256x256 on flux-mini, else 512x512)')
    .option('--steps <n>', 'denoising steps', '28')
    .option('--guidance <g>', 'guidance scale', '3.5')
    .option('--seed <n>', 'seed', '0')
    .option('--mode <mode>', 'engine mode', REFERENCE_MODE)
    .option('--max-sequence-length <n>', "T5 tokens (default: the model's, 512 for FLUX.1-dev, 32 for flux-mini)")
    .option('--image <file>', 'img2img / inpainting input image (resized to --size)')
    .option('--mask <file>', 'inpainting mask, the size of --image (white = repaint)')
    .option('--strength <s>', 'with --image: share of the schedule run, 0-1', '0.6')
    .option('--negative-prompt <text>', 'true CFG negative prompt (with --true-cfg > 1)')
    .option('--true-cfg <scale>', 'true CFG scale; > 1 with --negative-prompt runs the negative branch', '1')
    .addOption(provider)
    .action((args) => runGenerate(args, deps.compiler));

  program
    .command('conformance')
    .description('check the pipeline against a directory of diffusers reference outputs (index.json)')
    .option(
      '-f, --fixtures <dir>',
      'fixture directory with index.json (and optionally flux-tiny/)',
      DEFAULT_FIXTURES_DIR,
    )
    .option(
      '--edit-fixtures <dir>',
      "folder with edit_index.json (img2img, inpainting, true CFG); default: the repository's with the default --fixtures",
    )
    .option('-m, --model <dir>', 'model to test (default: <fixtures>/flux-tiny if present, else the embedded model)')
    .option('--mode <mode>', 'engine mode', REFERENCE_MODE)
    .action((args) => runConformance(args, deps.compiler));

  program
    .command('compile')
    .description(
      'plan, compile and calibrate (or find cached) the engines of a model ahead of serving: the ONNX engines, or ' +
        "with --engine cuda the native engine's planned modes (fp8 plans and step caching)",
    )
    .option('-m, --model <dir>', 'model folder or Hugging Face id org/name[@revision]', DEFAULT_MODEL_DIR)
    .option(
      '--mode <modes...>',
      `modes to build (planned ones are planned first): ${MODE_NAMES.join(' ')} ` +
        `(default: ${REFERENCE_MODE}; with --engine cuda: ${PLANNED_MODES.join(' ')})`,
    )
    .option('--engine <engine>', 'onnx (ONNX Runtime) or cuda (native engine, as serve --engine cuda); default ENGINE')
    .action((args: { model: string; mode?: string[]; engine?: string }) => {
      const engine = compileEngine(args.engine);
      return engine === 'cuda'
        ? runCudaCompile({ model: args.model, mode: args.mode ?? [...PLANNED_MODES] })
        : runCompile({ model: args.model, mode: args.mode ?? [REFERENCE_MODE] }, deps.compiler);
    });

  program
    .command('serve')
    .description('start the GraphQL / REST server')
    .option(
      '--role <role>',
      'process role: all (one process), api (scale-out API node) or worker (scale-out engine)',
      'all',
    )
    .option('--engine <engine>', 'onnx (ONNX Runtime) or cuda (native engine)')
    .addHelpText('after', formatEnvHelp())
    .action(runServe);

  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    exitWithError(err);
  }
}

/** `compile`'s engine: `--engine`, else ENGINE (as `serve` reads it), else onnx. */
function compileEngine(option: string | undefined): 'onnx' | 'cuda' {
  const engine = option ?? loadEngineChoice();
  if (engine !== 'onnx' && engine !== 'cuda')
    throw new UsageError(`--engine "${engine}" is not supported; use onnx or cuda`);
  return engine;
}
