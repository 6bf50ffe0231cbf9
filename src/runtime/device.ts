/**
 * @file Execution providers and how to ask ONNX Runtime for them. The table is frozen: adding a provider is a code
 * change, so a typo in configuration fails at start-up with the list of valid names.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { EXECUTION_PROVIDERS, type ExecutionProvider } from '../shared/vocabulary/index.ts';
import { ort } from './ort.ts';

export { EXECUTION_PROVIDERS, type ExecutionProvider };

/** A provider that was asked for but is not usable here. */
export class ProviderUnavailableError extends Error {
  constructor(
    readonly provider: string,
    reason: string,
  ) {
    super(`execution provider "${provider}" is not available: ${reason}`);
    this.name = 'ProviderUnavailableError';
  }
}

/** Validates a provider name; throws listing the valid ones. */
export function parseProvider(name: string): ExecutionProvider {
  if ((EXECUTION_PROVIDERS as readonly string[]).includes(name)) return name as ExecutionProvider;
  throw new ProviderUnavailableError(name, `unknown provider; expected one of: ${EXECUTION_PROVIDERS.join(', ')}`);
}

/**
 * Backends usable with the installed onnxruntime-node: bundled ones, plus unbundled ones (CUDA, TensorRT) whose
 * provider library the install script did put beside the binding.
 */
export function installedProviders(): string[] {
  const bindingDir = join(dirname(createRequire(import.meta.url).resolve('onnxruntime-node')), '..', 'bin');
  return ort()
    .listSupportedBackends()
    .filter((b) => b.bundled || providerLibraryPresent(bindingDir, b.name))
    .map((b) => b.name);
}

function providerLibraryPresent(binDir: string, name: string): boolean {
  const lib = `libonnxruntime_providers_${name}.so`;
  for (const napi of ['napi-v6', 'napi-v3']) {
    if (existsSync(join(binDir, napi, process.platform, process.arch, lib))) return true;
  }
  return false;
}

/** Throws {@link ProviderUnavailableError} when the installed ORT lacks `provider`. */
export function assertProviderInstalled(provider: ExecutionProvider): void {
  if (provider === 'cpu') return;
  const installed = installedProviders();
  if (!installed.includes(provider)) {
    const hint =
      provider === 'cuda'
        ? 'onnxruntime-node was installed without its CUDA binaries (reinstall with ONNXRUNTIME_NODE_INSTALL=cuda12 where the network allows it, or use --engine cuda for the native engine)'
        : `this onnxruntime-node build offers: ${installed.join(', ')}`;
    throw new ProviderUnavailableError(provider, hint);
  }
}
