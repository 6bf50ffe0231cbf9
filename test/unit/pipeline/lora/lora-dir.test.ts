/** LORA_DIR confinement: `..`, absolute paths and symlinks leading out are refused; links inside are followed. */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LoraError } from '../../../../src/pipeline/lora/errors.ts';
import { listLoraFiles, resolveLoraFile } from '../../../../src/pipeline/lora/lora-dir.ts';
import { useTempDir } from '../../../helpers/lora.ts';

const tempDir = useTempDir('lora-dir');

function setup() {
  const root = tempDir();
  const dir = join(root, 'loras');
  mkdirSync(join(dir, 'style'), { recursive: true });
  writeFileSync(join(dir, 'a.safetensors'), 'x');
  writeFileSync(join(dir, 'style', 'b.safetensors'), 'yy');
  writeFileSync(join(root, 'secret.safetensors'), 'zzz');
  symlinkSync(join(root, 'secret.safetensors'), join(dir, 'out.safetensors'));
  symlinkSync(root, join(dir, 'outdir'));
  symlinkSync(join(dir, 'a.safetensors'), join(dir, 'alias.safetensors'));
  return { root, dir };
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(LoraError);
    return (err as LoraError).code;
  }
  return 'ok';
}

describe('resolveLoraFile', () => {
  it('resolves names inside the folder, with or without the extension', () => {
    const { dir } = setup();
    expect(resolveLoraFile(dir, 'a').name).toBe('a.safetensors');
    expect(resolveLoraFile(dir, 'style/b.safetensors').sizeBytes).toBe(2);
    expect(resolveLoraFile(dir, 'alias').path).toBe(resolveLoraFile(dir, 'a').path);
  });

  it('refuses .., absolute paths and links that leave the folder', () => {
    const { root, dir } = setup();
    expect(code(() => resolveLoraFile(dir, '../secret'))).toBe('forbidden_path');
    expect(code(() => resolveLoraFile(dir, 'style/../../secret.safetensors'))).toBe('forbidden_path');
    expect(code(() => resolveLoraFile(dir, join(root, 'secret.safetensors')))).toBe('forbidden_path');
    expect(code(() => resolveLoraFile(dir, 'out'))).toBe('forbidden_path');
    expect(code(() => resolveLoraFile(dir, 'outdir/secret'))).toBe('forbidden_path');
    expect(code(() => resolveLoraFile(dir, ''))).toBe('forbidden_path');
    expect(code(() => resolveLoraFile(dir, 'nope'))).toBe('not_found');
  });
});

describe('listLoraFiles', () => {
  it('lists files inside, sub-folders included, and nothing reached through links out', () => {
    const { dir } = setup();
    expect(listLoraFiles(dir).map((f) => f.name)).toEqual([
      'a.safetensors',
      'alias.safetensors',
      'style/b.safetensors',
    ]);
  });
});
