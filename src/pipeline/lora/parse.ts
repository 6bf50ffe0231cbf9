/**
 * @file Reads a LoRA safetensors file, detects its format from the keys (docs/FLUX_SPEC.md §7.3 order), maps it onto the
 * model's diffusers modules and validates everything against the model before anything is used: every key
 * understood, shapes equal to the target layers, ranks 1..256, all values finite. Any failure is a
 * {@link LoraError}; nothing is returned half-parsed.
 */
import { openSafetensors, WeightsError } from '../../shared/weights/index.ts';
import { FactorCollector, type TensorReader } from './collect.ts';
import { LoraError, listKeys } from './errors.ts';
import { parseBflControl, parseKohya } from './format-bfl.ts';
import { parseDiffusers, parseXlabs } from './format-diffusers.ts';
import type { LoraModelSpec } from './model-layers.ts';
import type { LoraFormat, ParsedLora } from './types.ts';

/** Top-level BFL module stems: a `lora_A` file on these names is a BFL (Control) LoRA, not diffusers. */
const BFL_STEM =
  /^(diffusion_model\.)?(double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)\./;

/** The format of a key set (`dora_scale` keys already dropped), as diffusers' `lora_state_dict` decides it. */
export function detectLoraFormat(keys: readonly string[]): LoraFormat {
  if (keys.some((k) => k.includes('.lora_down.weight'))) return 'kohya';
  if (keys.some((k) => k.includes('processor'))) return 'xlabs';
  if (keys.some((k) => k.includes('query_norm.scale'))) return 'bfl-control';
  // fal Kontext (`base_model.model.…`) files are PEFT files with a wrapper prefix: the diffusers parser strips it.
  if (keys.some((k) => k.includes('.lora_A.weight') && BFL_STEM.test(k))) return 'bfl-control';
  return 'diffusers';
}

const PARSERS: Record<LoraFormat, (c: FactorCollector) => void> = {
  diffusers: parseDiffusers,
  kohya: parseKohya,
  xlabs: parseXlabs,
  'bfl-control': parseBflControl,
};

/** Maps and validates the tensors of `reader` for the model `spec`. @throws LoraError */
export function parseLoraTensors(reader: TensorReader, spec: LoraModelSpec): ParsedLora {
  const all = reader.names();
  if (all.length === 0) throw new LoraError('invalid_file', 'holds no tensors', reader.label);
  // DoRA magnitude vectors have no place in a plain LoRA delta; diffusers drops them too.
  const ignoredKeys = all.filter((k) => k.endsWith('dora_scale'));
  const keys = all.filter((k) => !k.endsWith('dora_scale'));
  const format = detectLoraFormat(keys);
  const view: TensorReader = {
    label: reader.label,
    metadata: reader.metadata,
    names: () => keys,
    shape: (n) => reader.shape(n),
    f32: (n) => reader.f32(n),
  };
  const c = new FactorCollector(view, spec);
  PARSERS[format](c);
  const unmatched = keys.filter((k) => !c.used.has(k));
  if (unmatched.length > 0) {
    throw new LoraError(
      'unmatched_keys',
      `${unmatched.length} of ${keys.length} keys do not map onto the model as a ${format} LoRA: ${listKeys(unmatched)}`,
      reader.label,
      unmatched,
    );
  }
  if (c.factors.size === 0 && c.norms.size === 0)
    throw new LoraError('unmatched_keys', `no LoRA layers found (${format})`, reader.label);
  const inChannels = validate(reader.label, c, spec);
  return { format, factors: c.factors, norms: c.norms, inChannels, ignoredKeys };
}

/**
 * Checks every factor and norm against the model; returns the input width the LoRA needs (the model's, or wider
 * when a control LoRA's `x_embedder` down factor is, docs/FLUX_SPEC.md §7.6).
 */
function validate(label: string, c: FactorCollector, spec: LoraModelSpec): number {
  let inChannels = spec.inChannels;
  for (const f of c.factors.values()) {
    const layer = spec.linears.get(f.module)!;
    const widened = f.module === 'x_embedder' && f.inFeatures > layer.inFeatures;
    if (f.outFeatures !== layer.outFeatures || (f.inFeatures !== layer.inFeatures && !widened)) {
      throw new LoraError(
        'shape_mismatch',
        `${f.module}: factors are [${f.rank}, ${f.inFeatures}] / [${f.outFeatures}, ${f.rank}], the layer is [out ${layer.outFeatures}, in ${layer.inFeatures}]`,
        label,
        [f.module],
      );
    }
    if (widened) inChannels = f.inFeatures;
    for (const [what, arr] of [
      ['down', f.a],
      ['up', f.b],
      ['bias', f.bias],
    ] as const) {
      if (arr && !allFinite(arr))
        throw new LoraError('non_finite', `${f.module}: ${what} factor holds NaN or infinite values`, label, [
          f.module,
        ]);
    }
  }
  for (const [module, w] of c.norms) {
    const dim = spec.norms.get(module)!;
    if (w.length !== dim) {
      throw new LoraError(
        'shape_mismatch',
        `${module}: replacement has ${w.length} values, the norm has ${dim}`,
        label,
        [module],
      );
    }
    if (!allFinite(w))
      throw new LoraError('non_finite', `${module}: replacement holds NaN or infinite values`, label, [module]);
  }
  return inChannels;
}

function allFinite(a: Float32Array): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return false;
  return true;
}

/** Opens `path` and parses it (see {@link parseLoraTensors}); `label` names it in errors. @throws LoraError */
export function parseLoraFile(path: string, spec: LoraModelSpec, label = path): ParsedLora {
  // A file the safetensors reader refuses (truncated, bad header, unsupported dtype) is an invalid LoRA file.
  const typed = (err: unknown) =>
    err instanceof WeightsError
      ? new LoraError('invalid_file', err.message.replace(`${path}: `, ''), label, [], { cause: err })
      : err;
  let file: ReturnType<typeof openSafetensors>;
  try {
    file = openSafetensors(path);
  } catch (err) {
    throw typed(err);
  }
  try {
    const reader: TensorReader = {
      label,
      metadata: file.metadata,
      names: () => file.names(),
      shape: (n) => file.info(n).shape,
      f32: (n) => file.readF32(n),
    };
    return parseLoraTensors(reader, spec);
  } catch (err) {
    throw typed(err);
  } finally {
    file.close();
  }
}
