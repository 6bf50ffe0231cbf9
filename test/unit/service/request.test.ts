import { describe, expect, it } from 'vitest';
import { UnknownModelError, ValidationError } from '../../../src/service/errors.ts';
import { ModelCatalog } from '../../../src/service/models.ts';
import { parseGenerateInput } from '../../../src/service/request.ts';
import { createFakeExecutor } from '../../helpers/fake-executor.ts';

const catalog = new ModelCatalog(createFakeExecutor({ modes: ['original', 'S'] }).info(), {
  batchSize: 4,
  defaultSize: 'original',
});

function fieldOf(input: object): string {
  try {
    parseGenerateInput({ prompt: 'a cat', ...input }, catalog);
  } catch (err) {
    if (err instanceof ValidationError) return err.field;
    throw err;
  }
  throw new Error('expected a ValidationError');
}

describe('parseGenerateInput', () => {
  it('applies the defaults: 1:1 at 1024x1024, 28 steps, guidance 3.5, one WebP', () => {
    const r = parseGenerateInput({ prompt: 'a cat' }, catalog);
    expect(r).toMatchObject({ width: 1024, height: 1024, steps: 28, guidanceScale: 3.5, numImages: 1 });
    expect(r.outputFormat).toBe('webp');
    expect(r.model.id).toBe('flux-1-dev-original-bs4');
    expect(Number.isInteger(r.seed)).toBe(true);
  });

  it("gives a request without a size the model's native size: 256x256 on flux-mini", () => {
    const mini = new ModelCatalog(
      { ...createFakeExecutor({ modes: ['original'] }).info(), name: 'flux-mini' },
      { batchSize: 4, defaultSize: 'original' },
    );
    expect(mini.default.limits).toMatchObject({ defaultWidth: 256, defaultHeight: 256 });
    expect(parseGenerateInput({ prompt: 'a red circle on a blue background' }, mini)).toMatchObject({
      width: 256,
      height: 256,
    });
    // An explicit ratio or size still wins.
    expect(parseGenerateInput({ prompt: 'x', aspectRatio: '1:1' }, mini)).toMatchObject({ width: 1024, height: 1024 });
    expect(parseGenerateInput({ prompt: 'x', width: 512, height: 384 }, mini)).toMatchObject({
      width: 512,
      height: 384,
    });
    expect(catalog.default.limits).toMatchObject({ defaultWidth: 1024, defaultHeight: 1024 });
  });

  it('maps the seed card aspect ratios', () => {
    expect(parseGenerateInput({ prompt: 'x', aspectRatio: '9:21' }, catalog)).toMatchObject({
      width: 544,
      height: 1280,
    });
    expect(parseGenerateInput({ prompt: 'x', aspectRatio: '16:9' }, catalog)).toMatchObject({
      width: 1280,
      height: 736,
    });
  });

  it('names the field at fault', () => {
    expect(fieldOf({ width: 100, height: 64 })).toBe('width');
    expect(fieldOf({ width: 64 })).toBe('height');
    expect(fieldOf({ width: 2048, height: 64 })).toBe('width');
    expect(fieldOf({ steps: 0 })).toBe('steps');
    expect(fieldOf({ steps: 500 })).toBe('steps');
    expect(fieldOf({ prompt: '' })).toBe('prompt');
    expect(fieldOf({ prompt: 'x'.repeat(100_000) })).toBe('prompt');
    expect(fieldOf({ aspectRatio: '7:3' })).toBe('aspectRatio');
    expect(fieldOf({ aspectRatio: '1:1', width: 64, height: 64 })).toBe('aspectRatio');
    expect(fieldOf({ numImages: 5 })).toBe('numImages');
    expect(fieldOf({ guidanceScale: -1 })).toBe('guidanceScale');
    expect(fieldOf({ seed: -1 })).toBe('seed');
    expect(fieldOf({ steps: '4' })).toBe('steps');
    expect(fieldOf({ outputFormat: 'gif' })).toBe('outputFormat');
  });

  it('resolves model ids, modes and the alias; unknown names are typed errors', () => {
    expect(parseGenerateInput({ prompt: 'x', model: 'flux-1-dev-s-bs4' }, catalog).model.mode).toBe('S');
    expect(parseGenerateInput({ prompt: 'x', mode: 's' }, catalog).model.mode).toBe('S');
    expect(parseGenerateInput({ prompt: 'x', model: 'flux-1-dev' }, catalog).model.mode).toBe('original');
    expect(() => parseGenerateInput({ prompt: 'x', model: 'flux-1-dev-s-bs8' }, catalog)).toThrow(UnknownModelError);
    expect(() => parseGenerateInput({ prompt: 'x', mode: 'XL' }, catalog)).toThrow(UnknownModelError);
  });
});

describe('LoRA sets in a request', () => {
  it('defaults strengths to 1, keeps absent apart from empty, and names `loras` for bad sets', () => {
    const parse = (loras: unknown) => parseGenerateInput({ prompt: 'x', loras } as never, catalog).loras;
    expect(parse(undefined)).toBeUndefined();
    expect(parse(null)).toBeUndefined();
    expect(parse([])).toEqual([]);
    expect(parse([{ name: 'a' }, { name: 'b', strength: -0.5 }])).toEqual([
      { name: 'a', strength: 1 },
      { name: 'b', strength: -0.5 },
    ]);
    for (const bad of [
      'a',
      [{ name: '' }],
      [{ name: 'a', strength: 'x' }],
      [{ name: 'a', strength: 10.5 }],
      [{ name: 'a' }, { name: 'a.safetensors' }],
      Array.from({ length: 9 }, (_, i) => ({ name: `l${i}` })),
    ]) {
      expect([bad, fieldOf({ loras: bad })]).toEqual([bad, 'loras']);
    }
  });
});

describe('ModelCatalog', () => {
  it('lists one entry per executor mode with the published table of that tier', () => {
    expect(catalog.ids()).toEqual(['flux-1-dev-original-bs4', 'flux-1-dev-s-bs4']);
    const s = catalog.resolve('S');
    expect(s.published.find((p) => p.gpu === 'H100')?.latencySeconds).toBe(2.88);
    expect(s.published.find((p) => p.gpu === 'RTX 5090')?.latencySeconds).toBe(5.53);
    expect(catalog.resolve('original').published.find((p) => p.gpu === 'RTX 5090')?.latencySeconds).toBeNull();
  });

  it('fails at startup when MODEL_SIZE names a mode the engine lacks', () => {
    expect(() => new ModelCatalog(createFakeExecutor().info(), { batchSize: 4, defaultSize: 'xl' })).toThrow(
      UnknownModelError,
    );
  });
});
