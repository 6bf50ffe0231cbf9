/**
 * @file Finds a FLUX model's parts on disk and hands out weight sources that always speak diffusers names.
 *
 * Recognised layouts:
 * - a diffusers repo folder (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `text_encoder_2/`,
 *   `tokenizer/`, `tokenizer_2/`, `scheduler/`);
 * - a folder with BFL single files, `flux1-*.safetensors` (transformer) and `ae.safetensors` (VAE), beside the
 *   diffusers text-encoder, tokenizer and scheduler folders (the FLUX.1-dev repo has both forms: the diffusers
 *   folders are preferred unless `preferBfl` is set);
 * - an explicit transformer `.safetensors` file (BFL or diffusers names); everything else then comes from
 *   `baseRepo`, by default the file's folder.
 * Resolution reads only headers and configs; weights are read when a component's `open()` source is used.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { bflTransformerKeyMap, bflVaeKeyMap, isBflTransformer, isBflVae } from './bfl-keymap.ts';
import { WeightsError } from './errors.ts';
import { fingerprintWeights } from './fingerprint.ts';
import { type ComponentConfig, inferTransformerConfig, inferVaeConfig } from './infer-config.ts';
import { createMappedSource, type MappedTensor } from './mapped-source.ts';
import { openSafetensors } from './safetensors.ts';
import { textEncoderKeyMap } from './text-encoder-keys.ts';
import { locateComponentWeights, openComponentFiles, type WeightSource } from './weight-source.ts';

/** The weight-bearing components of a FLUX pipeline. */
export type ComponentName = 'transformer' | 'vae' | 'text_encoder' | 'text_encoder_2';

/** How a component's files name their tensors (sources always translate to diffusers names). */
export type WeightFormat = 'diffusers' | 'bfl';

/** One component's weights, config and identity. */
export interface ComponentWeights {
  readonly name: ComponentName;
  /** Key format of the files on disk. */
  readonly format: WeightFormat;
  /** The weight files (one, or every shard). */
  readonly files: readonly string[];
  /** The diffusers/transformers config: parsed `config.json`, or inferred from tensor shapes. */
  readonly config: ComponentConfig;
  /** The `config.json` the config came from, or `'inferred'`. */
  readonly configSource: string;
  /** sha256 hex over headers, sizes, mtimes, format and config (see `fingerprint.ts`). */
  readonly fingerprint: string;
  /** Opens a fresh source over the files, answering to diffusers names; the caller closes it. */
  open(): WeightSource;
  /**
   * The diffusers-name → stored-tensor map that `open()` applies (BFL names, text-encoder spellings), read from the
   * headers; undefined when the files already use the names consumers ask for. The CUDA engine loads through it.
   */
  keyMap(): ReadonlyMap<string, MappedTensor> | undefined;
}

/** How stored names become diffusers names, from a source's header. */
type KeyMapper = (source: WeightSource) => Map<string, MappedTensor>;

/** Runs `fn` on a freshly opened source and closes it. */
function withSource<T>(open: () => WeightSource, fn: (s: WeightSource) => T): T {
  const s = open();
  try {
    return fn(s);
  } finally {
    s.close();
  }
}

/** `open` seen through `mapper` (when there is one): the mapped source owns, and closes, the raw one. */
function mappedOpener(openRaw: () => WeightSource, mapper: KeyMapper | undefined): () => WeightSource {
  if (!mapper) return openRaw;
  return () => {
    const raw = openRaw();
    try {
      return createMappedSource(raw, mapper(raw));
    } catch (err) {
      raw.close();
      throw err;
    }
  };
}

/** A resolved model: components plus tokenizer and scheduler folders. */
export interface ModelRepo {
  /** The folder the non-transformer parts come from (absolute). */
  readonly root: string;
  /** Which layout was recognised. */
  readonly layout: 'diffusers' | 'bfl-folder' | 'bfl-file';
  readonly components: Readonly<Record<ComponentName, ComponentWeights>>;
  /** CLIP tokenizer folder (`vocab.json`, `merges.txt`). */
  readonly tokenizerDir: string;
  /** T5 tokenizer folder (`tokenizer.json` / `spiece.model`). */
  readonly tokenizer2Dir: string;
  /** Scheduler folder and its parsed `scheduler_config.json`. */
  readonly schedulerDir: string;
  readonly schedulerConfig: ComponentConfig;
  /** Parsed `model_index.json`, when the folder has one. */
  readonly modelIndex?: ComponentConfig;
}

/** Options of {@link resolveModelRepo}. */
export interface ResolveModelRepoOptions {
  /** Use `flux1-*.safetensors` / `ae.safetensors` even when diffusers `transformer/` / `vae/` exist. @default false */
  preferBfl?: boolean;
  /** Where the text encoders, tokenizers, scheduler (and VAE) come from when `path` is a transformer file. */
  baseRepo?: string;
  /** Fields merged over each component's config (last word; e.g. `axes_dims_rope` for a non-FLUX head size). */
  configOverrides?: Partial<Record<ComponentName, Record<string, unknown>>>;
}

function readJson(path: string): ComponentConfig {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new WeightsError(path, `cannot read JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new WeightsError(path, 'not a JSON object');
  return json as ComponentConfig;
}

function isDir(p: string): boolean {
  return existsSync(p) && statSync(p).isDirectory();
}

function requireDir(root: string, sub: string): string {
  const p = join(root, sub);
  if (!isDir(p)) throw new WeightsError(p, `missing '${sub}' folder in model repo ${root}`);
  return p;
}

/** Builds a component whose config is inferred from a source (which is opened once, for its header). */
function makeComponent(
  name: ComponentName,
  format: WeightFormat,
  files: readonly string[],
  openRaw: () => WeightSource,
  mapper: KeyMapper | undefined,
  config: ComponentConfig | ((s: WeightSource) => ComponentConfig),
  configSource: string,
  overrides: Record<string, unknown> | undefined,
): ComponentWeights {
  const open = mappedOpener(openRaw, mapper);
  const base = typeof config === 'function' ? withSource(open, config) : config;
  const merged = Object.freeze({ ...base, ...overrides });
  return {
    name,
    format,
    files,
    config: merged,
    configSource,
    fingerprint: fingerprintWeights(format, files, merged),
    open,
    keyMap: () => (mapper ? withSource(openRaw, mapper) : undefined),
  };
}

/** A diffusers component folder: `config.json` (required for text encoders, else inferred) + weights. */
function diffusersComponent(name: ComponentName, dir: string, overrides?: Record<string, unknown>): ComponentWeights {
  const located = locateComponentWeights(dir);
  const isText = name === 'text_encoder' || name === 'text_encoder_2';
  const openRaw = () => openComponentFiles(located);
  const mapper = isText ? textEncoderKeyMap : undefined;
  const configPath = join(dir, 'config.json');
  if (existsSync(configPath)) {
    const config = readJson(configPath);
    return makeComponent(name, 'diffusers', located.files, openRaw, mapper, config, configPath, overrides);
  }
  if (isText) throw new WeightsError(configPath, `text encoder config is missing`);
  const infer = name === 'transformer' ? inferTransformerConfig : inferVaeConfig;
  const inferred = (s: WeightSource) => infer(s, overrides);
  return makeComponent(name, 'diffusers', located.files, openRaw, mapper, inferred, 'inferred', overrides);
}

/** A single-file transformer or VAE (BFL or diffusers names); `hintDir` may hold a matching diffusers config. */
function singleFileComponent(
  name: 'transformer' | 'vae',
  file: string,
  hintDir: string,
  overrides?: Record<string, unknown>,
): ComponentWeights {
  const probe = openSafetensors(file);
  const names = probe.names();
  probe.close();
  const bfl = name === 'transformer' ? isBflTransformer(names) : isBflVae(names);
  const mapper = bfl ? (name === 'transformer' ? bflTransformerKeyMap : bflVaeKeyMap) : undefined;
  const openRaw = () => openSafetensors(file);
  // A diffusers config beside the file describes the same architecture and supplies what shapes cannot tell.
  const hintPath = join(hintDir, name, 'config.json');
  const hint = { ...(existsSync(hintPath) ? readJson(hintPath) : {}), ...overrides };
  const infer = name === 'transformer' ? inferTransformerConfig : inferVaeConfig;
  const inferred = (s: WeightSource) => infer(s, hint);
  return makeComponent(name, bfl ? 'bfl' : 'diffusers', [file], openRaw, mapper, inferred, 'inferred', overrides);
}

/** The BFL transformer file of a folder: `flux1-dev.safetensors`, else the only `flux1-*.safetensors`. */
function findBflTransformer(root: string): string | undefined {
  const all = readdirSync(root).filter((f) => /^flux1-.*\.safetensors$/.test(f));
  if (all.includes('flux1-dev.safetensors')) return join(root, 'flux1-dev.safetensors');
  if (all.length > 1)
    throw new WeightsError(root, `several BFL transformer files, pass one explicitly: ${all.join(', ')}`);
  return all[0] === undefined ? undefined : join(root, all[0]);
}

function hasDiffusersWeights(dir: string): boolean {
  return (
    isDir(dir) && readdirSync(dir).some((f) => f.endsWith('.safetensors') || f.endsWith('.safetensors.index.json'))
  );
}

/** Picks the diffusers folder or the BFL file for one component, by availability and `preferBfl`. */
function pick(
  name: 'transformer' | 'vae',
  root: string,
  bflFile: string | undefined,
  opts: ResolveModelRepoOptions,
): ComponentWeights {
  const dir = join(root, name);
  const overrides = opts.configOverrides?.[name];
  const haveDiffusers = hasDiffusersWeights(dir);
  if (bflFile && (opts.preferBfl || !haveDiffusers)) return singleFileComponent(name, bflFile, root, overrides);
  if (haveDiffusers || isDir(dir)) return diffusersComponent(name, dir, overrides);
  const expected = name === 'transformer' ? `'transformer/' or 'flux1-*.safetensors'` : `'vae/' or 'ae.safetensors'`;
  throw new WeightsError(root, `no ${name} weights: expected ${expected}`);
}

/**
 * Resolves a model folder or transformer file (see the file header for the layouts).
 *
 * @throws WeightsError naming the path at fault: missing folder or file, missing component folder, no weights,
 * missing shard, unreadable config or header, or a BFL tensor with no known mapping.
 */
export function resolveModelRepo(path: string, opts: ResolveModelRepoOptions = {}): ModelRepo {
  const target = resolve(path);
  if (!existsSync(target)) throw new WeightsError(target, 'model path not found');
  const isFile = statSync(target).isFile();
  if (isFile && !target.endsWith('.safetensors'))
    throw new WeightsError(target, 'expected a folder or a .safetensors file');
  const root = isFile ? resolve(opts.baseRepo ?? dirname(target)) : target;
  if (!isDir(root)) throw new WeightsError(root, 'base repo folder not found');

  const indexPath = join(root, 'model_index.json');
  const modelIndex = existsSync(indexPath) ? readJson(indexPath) : undefined;
  const schedulerDir = requireDir(root, 'scheduler');
  const tokenizerDir = requireDir(root, 'tokenizer');
  const tokenizer2Dir = requireDir(root, 'tokenizer_2');
  const o = opts.configOverrides ?? {};
  const textEncoder = diffusersComponent('text_encoder', requireDir(root, 'text_encoder'), o.text_encoder);
  const textEncoder2 = diffusersComponent('text_encoder_2', requireDir(root, 'text_encoder_2'), o.text_encoder_2);

  const aePath = join(root, 'ae.safetensors');
  const vae = pick('vae', root, existsSync(aePath) ? aePath : undefined, opts);
  const transformer = isFile
    ? singleFileComponent('transformer', target, root, o.transformer)
    : pick('transformer', root, findBflTransformer(root), opts);

  // Single files (BFL names or not) sit in the repo root; diffusers components sit in subfolders.
  const singleFile = [transformer, vae].some((c) => dirname(c.files[0] ?? '') === root);
  return {
    root,
    layout: isFile ? 'bfl-file' : singleFile ? 'bfl-folder' : 'diffusers',
    components: Object.freeze({ transformer, vae, text_encoder: textEncoder, text_encoder_2: textEncoder2 }),
    tokenizerDir,
    tokenizer2Dir,
    schedulerDir,
    schedulerConfig: readJson(join(schedulerDir, 'scheduler_config.json')),
    ...(modelIndex ? { modelIndex } : {}),
  };
}
