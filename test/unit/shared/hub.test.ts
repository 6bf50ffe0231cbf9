/** Pure parts of the Hugging Face layer: ids, cache paths, which files a FLUX pipeline needs. */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultHubCacheDir, hubRepoOfSnapshot, parseHubModelId, wantedFiles } from '../../../src/shared/hub/index.ts';

describe('parseHubModelId', () => {
  it('reads org/name with an optional revision', () => {
    expect(parseHubModelId('black-forest-labs/FLUX.1-dev')).toEqual({
      repo: 'black-forest-labs/FLUX.1-dev',
      revision: 'main',
    });
    expect(parseHubModelId('org/name@v1.0')).toEqual({ repo: 'org/name', revision: 'v1.0' });
    expect(parseHubModelId('org/name@refs/pr/3')).toEqual({ repo: 'org/name', revision: 'refs/pr/3' });
  });

  it('rejects what is a path, not an id', () => {
    for (const spec of [
      './models/x',
      '/abs/path',
      'a/b/c',
      'org/..',
      '../x',
      'name',
      'org/name@',
      'org/name@a/../../x',
    ])
      expect(parseHubModelId(spec), spec).toBeUndefined();
  });
});

describe('defaultHubCacheDir', () => {
  it('follows huggingface_hub: HF_HUB_CACHE, then HF_HOME/hub, then XDG_CACHE_HOME/huggingface/hub', () => {
    expect(defaultHubCacheDir({ HF_HUB_CACHE: '/c', HF_HOME: '/h' })).toBe('/c');
    expect(defaultHubCacheDir({ HF_HOME: '/h', XDG_CACHE_HOME: '/x' })).toBe(join('/h', 'hub'));
    expect(defaultHubCacheDir({ XDG_CACHE_HOME: '/x' })).toBe(join('/x', 'huggingface', 'hub'));
  });
});

describe('hubRepoOfSnapshot', () => {
  it('names cache snapshots by repo id and nothing else', () => {
    const commit = 'a'.repeat(40);
    expect(hubRepoOfSnapshot(`/c/hub/models--black-forest-labs--FLUX.1-dev/snapshots/${commit}`)).toBe(
      'black-forest-labs/FLUX.1-dev',
    );
    expect(hubRepoOfSnapshot('/work/models/flux-tiny')).toBeUndefined();
  });
});

describe('wantedFiles', () => {
  // The FLUX.1-dev repo's layout: diffusers folders and the BFL single files side by side, plus extras.
  const fluxDev = [
    '.gitattributes',
    'LICENSE.md',
    'README.md',
    'ae.safetensors',
    'dev_grid.jpg',
    'flux1-dev.safetensors',
    'model_index.json',
    'scheduler/scheduler_config.json',
    'text_encoder/config.json',
    'text_encoder/model.safetensors',
    'text_encoder_2/config.json',
    'text_encoder_2/model-00001-of-00002.safetensors',
    'text_encoder_2/model-00002-of-00002.safetensors',
    'text_encoder_2/model.safetensors.index.json',
    'tokenizer/merges.txt',
    'tokenizer/special_tokens_map.json',
    'tokenizer/tokenizer_config.json',
    'tokenizer/vocab.json',
    'tokenizer_2/special_tokens_map.json',
    'tokenizer_2/spiece.model',
    'tokenizer_2/tokenizer.json',
    'tokenizer_2/tokenizer_config.json',
    'transformer/config.json',
    'transformer/diffusion_pytorch_model-00001-of-00003.safetensors',
    'transformer/diffusion_pytorch_model-00002-of-00003.safetensors',
    'transformer/diffusion_pytorch_model-00003-of-00003.safetensors',
    'transformer/diffusion_pytorch_model.safetensors.index.json',
    'vae/config.json',
    'vae/diffusion_pytorch_model.safetensors',
  ];

  it('takes the diffusers folders of FLUX.1-dev and skips the BFL duplicates and extras', () => {
    const wanted = wantedFiles(fluxDev);
    expect(wanted).not.toContain('flux1-dev.safetensors');
    expect(wanted).not.toContain('ae.safetensors');
    expect(wanted).not.toContain('README.md');
    expect(wanted).not.toContain('dev_grid.jpg');
    expect(wanted).toContain('tokenizer_2/spiece.model');
    expect(wanted).toContain('transformer/diffusion_pytorch_model.safetensors.index.json');
    expect(wanted).toHaveLength(fluxDev.length - 6);
  });

  it('takes the BFL single files when there are no diffusers weights for them', () => {
    const bflOnly = fluxDev.filter((p) => !/^(transformer|vae)\/.*\.safetensors/.test(p));
    const wanted = wantedFiles(bflOnly);
    expect(wanted).toContain('flux1-dev.safetensors');
    expect(wanted).toContain('ae.safetensors');
  });
});
