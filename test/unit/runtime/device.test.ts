/** Execution-provider selection fails early and clearly for providers this ONNX Runtime install lacks. */
import { describe, expect, it } from 'vitest';
import { installedProviders, ProviderUnavailableError, parseProvider, Session } from '../../../src/runtime/index.ts';

describe('execution providers', () => {
  it('lists the bundled CPU provider', () => {
    expect(installedProviders()).toContain('cpu');
  });

  it('rejects unknown provider names listing the valid ones', () => {
    expect(() => parseProvider('tpu')).toThrow(/expected one of: cpu, webgpu, cuda/);
    expect(parseProvider('cpu')).toBe('cpu');
  });

  it('explains a missing CUDA provider before touching the model file', async () => {
    if (installedProviders().includes('cuda')) return; // an install with ORT's CUDA binaries
    const err = await Session.create('transformer', '/nonexistent.onnx', { provider: 'cuda' }).catch((e) => e);
    expect(err).toBeInstanceOf(ProviderUnavailableError);
    expect(err.message).toMatch(/ONNXRUNTIME_NODE_INSTALL=cuda12/);
  });

  it('wraps a missing model file with the component name', async () => {
    await expect(Session.create('vae', '/nonexistent/vae.onnx')).rejects.toThrow(
      /cannot load vae engine from \/nonexistent\/vae\.onnx/,
    );
  });
});
