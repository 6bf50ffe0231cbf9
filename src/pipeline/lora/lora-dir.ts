/**
 * @file LORA_DIR confinement: LoRA files are named relative to one directory, and nothing outside it is ever
 * opened. Names with `..` segments, absolute paths, and paths whose real location (after symlinks) leaves the
 * directory are refused with a `forbidden_path` {@link LoraError}.
 */
import { existsSync, lstatSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { LoraError } from './errors.ts';
import { LORA_EXTENSION, loraFileName } from './selection.ts';

/** A LoRA file inside LORA_DIR. */
export interface LoraFile {
  /** Name relative to the directory, `/`-separated, with the extension. */
  name: string;
  /** Real absolute path. */
  path: string;
  sizeBytes: number;
  mtimeMs: number;
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
}

/**
 * Resolves `name` inside `dir`. @throws LoraError `forbidden_path` for escapes, `not_found` when there is no such
 * regular file.
 */
export function resolveLoraFile(dir: string, name: string): LoraFile {
  if (typeof name !== 'string' || name.trim() === '' || name.includes('\0')) {
    throw new LoraError('forbidden_path', 'a LoRA name must be a non-empty relative path', String(name));
  }
  if (isAbsolute(name) || /^[a-zA-Z]:/.test(name) || name.startsWith('\\')) {
    throw new LoraError('forbidden_path', 'absolute paths are refused; name a file inside LORA_DIR', name);
  }
  if (name.split(/[\\/]/).some((seg) => seg === '..')) {
    throw new LoraError('forbidden_path', "'..' is refused; name a file inside LORA_DIR", name);
  }
  const fileName = loraFileName(name);
  let root: string;
  try {
    root = realpathSync(dir);
  } catch (err) {
    throw new LoraError('not_found', `LORA_DIR ${dir} does not exist`, name, [], { cause: err });
  }
  const candidate = resolve(root, fileName);
  if (!inside(root, candidate)) throw new LoraError('forbidden_path', 'resolves outside LORA_DIR', name);
  if (!existsSync(candidate)) throw new LoraError('not_found', `no such LoRA file in LORA_DIR`, name);
  // Symlinks are followed only when their target stays inside the directory.
  const real = realpathSync(candidate);
  if (!inside(root, real)) throw new LoraError('forbidden_path', 'is a link to a file outside LORA_DIR', name);
  const st = statSync(real);
  if (!st.isFile()) throw new LoraError('not_found', 'is not a regular file', name);
  return { name: fileName.split(sep).join('/'), path: real, sizeBytes: st.size, mtimeMs: st.mtimeMs };
}

/** Every `*.safetensors` file under `dir` (sub-folders up to `maxDepth`), skipping anything that escapes it. */
export function listLoraFiles(dir: string, maxDepth = 4): LoraFile[] {
  if (!existsSync(dir)) return [];
  const root = realpathSync(dir);
  const out: LoraFile[] = [];
  const walk = (rel: string, depth: number) => {
    for (const entry of readdirSync(join(root, rel)).sort()) {
      const relName = rel ? `${rel}/${entry}` : entry;
      const abs = join(root, relName);
      const real = safeRealpath(abs);
      if (!real || !inside(root, real)) continue;
      const st = statSync(real);
      if (st.isDirectory() && !lstatSync(abs).isSymbolicLink() && depth < maxDepth) walk(relName, depth + 1);
      else if (st.isFile() && entry.endsWith(LORA_EXTENSION)) {
        out.push({ name: relName, path: real, sizeBytes: st.size, mtimeMs: st.mtimeMs });
      }
    }
  };
  walk('', 0);
  return out;
}

function safeRealpath(p: string): string | undefined {
  try {
    return realpathSync(p);
  } catch {
    return undefined; // dangling link
  }
}
