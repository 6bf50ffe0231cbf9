/**
 * @file LoRA API: the `loras` query (files in LORA_DIR, valid or not), `activeLoras`, the `loadLora` / `unloadLora`
 * mutations on the server-wide default set, and the types `generateImage` and `ImageJob` use for LoRA sets
 * (`LoraInput`, `LoraSelection`). LoRA failures come back as data: a `LoraError` with the LoRA layer's `code`.
 */
import {
  type LoraInfo,
  LoraRequestError,
  type LoraSelection,
  MAX_LORA_STRENGTH,
  ValidationError,
} from '../../service/index.ts';
import { builder } from '../builder.ts';
import { ErrorInterface } from './errors.ts';

/**
 * Marks a plain-object LoraError payload: a field resolver cannot return an Error instance as a value (GraphQL
 * would take it for a failure), so `InvalidLoraFile.error` carries this shape.
 */
const LORA_ERROR_PAYLOAD = Symbol('loraErrorPayload');

builder.objectType(LoraRequestError, {
  name: 'LoraError',
  description:
    'A LoRA file or set cannot be used. `code`: not_found, forbidden_path (outside LORA_DIR), invalid_file, ' +
    'unmatched_keys, shape_mismatch, bad_rank, non_finite, unsupported or bad_argument.',
  interfaces: [ErrorInterface],
  isTypeOf: (v) => v instanceof LoraRequestError || (typeof v === 'object' && v !== null && LORA_ERROR_PAYLOAD in v),
  fields: (t) => ({
    lora: t.exposeString('lora', { nullable: true, description: 'The LoRA at fault, when there is one.' }),
    keys: t.exposeStringList('keys', { description: 'Offending tensor keys, for key and shape errors.' }),
  }),
});

const LoraFormatEnum = builder.enumType('LoraFormat', {
  description: 'File format, detected from the tensor keys.',
  values: {
    DIFFUSERS: { value: 'diffusers', description: 'diffusers / PEFT (`lora_A` / `lora_B`).' },
    KOHYA: { value: 'kohya', description: 'kohya (`lora_unet_…`, `lora_down` / `lora_up` / `alpha`).' },
    XLABS: { value: 'xlabs', description: 'XLabs (`processor.qkv_lora1` …).' },
    BFL_CONTROL: { value: 'bfl-control', description: 'BFL Control LoRA (widened input, biases, norms).' },
  } as const,
});

/** A valid LoRA file with its place in the default set. */
interface LoraFileShape extends LoraInfo {
  kind: 'valid';
  /** Strength in the default set; null when not in it. */
  strength: number | null;
}

/** A file in LORA_DIR that does not parse for this model. */
interface InvalidLoraFileShape {
  kind: 'invalid';
  name: string;
  sizeBytes: number;
  error: Pick<LoraRequestError, 'code' | 'message' | 'lora' | 'keys'> & { [LORA_ERROR_PAYLOAD]: true };
}

const LoraEntryRef = builder.interfaceRef<LoraFileShape | InvalidLoraFileShape>('LoraEntry').implement({
  description: 'A `*.safetensors` file in LORA_DIR.',
  resolveType: (e) => (e.kind === 'valid' ? 'LoraFile' : 'InvalidLoraFile'),
  fields: (t) => ({
    name: t.exposeString('name', { description: 'Path relative to LORA_DIR, e.g. `style/anime.safetensors`.' }),
    sizeBytes: t.exposeFloat('sizeBytes'),
  }),
});

/** GraphQL type of a valid LoRA file. */
export const LoraFileRef = builder.objectRef<LoraFileShape>('LoraFile').implement({
  description: 'A LoRA file this model can use.',
  interfaces: [LoraEntryRef],
  fields: (t) => ({
    format: t.field({ type: LoraFormatEnum, resolve: (l) => l.format }),
    rank: t.exposeInt('rank', { description: 'Largest rank over its layers.' }),
    ranks: t.exposeIntList('ranks', { description: 'Distinct ranks over its layers, ascending.' }),
    targetedLayers: t.exposeStringList('targetedLayers', {
      description: 'Diffusers modules it changes (Linears, then replaced norms), sorted.',
    }),
    targetedLayerCount: t.int({ resolve: (l) => l.targetedLayers.length }),
    hasBias: t.exposeBoolean('hasBias', { description: 'Whether it carries bias deltas (BFL Control).' }),
    normReplacements: t.exposeInt('normReplacements', { description: 'QK-norm weights it replaces.' }),
    inChannels: t.exposeInt('inChannels', { description: 'Input width it needs (wider for control LoRAs).' }),
    active: t.boolean({
      description: 'Whether it is in the server-wide default set.',
      resolve: (l) => l.strength !== null,
    }),
    strength: t.exposeFloat('strength', { nullable: true, description: 'Its strength in the default set.' }),
  }),
});

builder.objectRef<InvalidLoraFileShape>('InvalidLoraFile').implement({
  description: 'A file in LORA_DIR that this model cannot use, with the reason.',
  interfaces: [LoraEntryRef],
  fields: (t) => ({
    error: t.field({ type: LoraRequestError, resolve: (f) => f.error as unknown as LoraRequestError }),
  }),
});

/** GraphQL type of one member of a LoRA set. */
export const LoraSelectionRef = builder.objectRef<LoraSelection>('LoraSelection').implement({
  description: 'A LoRA and its strength in a set.',
  fields: (t) => ({
    name: t.exposeString('name'),
    strength: t.exposeFloat('strength'),
  }),
});

/** Input of one member of a LoRA set (`GenerateImageInput.loras`). */
export const LoraInputRef = builder.inputType('LoraInput', {
  description: 'A LoRA file in LORA_DIR and its strength.',
  fields: (t) => ({
    name: t.string({ required: true, description: 'Path relative to LORA_DIR; `.safetensors` may be left out.' }),
    strength: t.float({
      defaultValue: 1,
      description: `Scale of its delta, -${MAX_LORA_STRENGTH}…${MAX_LORA_STRENGTH}.`,
    }),
  }),
});

const UnloadLoraPayload = builder.simpleObject('UnloadLoraPayload', {
  fields: (t) => ({
    unloaded: t.boolean({ description: 'False when the LoRA was not in the default set.' }),
    active: t.field({ type: [LoraSelectionRef], description: 'The default set after the change.' }),
  }),
});

function fileShape(info: LoraInfo, active: readonly LoraSelection[]): LoraFileShape {
  return { ...info, kind: 'valid', strength: active.find((a) => a.name === info.name)?.strength ?? null };
}

builder.queryField('loras', (t) =>
  t.field({
    type: [LoraEntryRef],
    description:
      'Every LoRA file in LORA_DIR: `LoraFile` for usable ones, `InvalidLoraFile` with the reason for others.',
    errors: { types: [LoraRequestError] },
    resolve: async (_root, _args, ctx) => {
      const { loras, invalid, active } = await ctx.service.loras();
      return [
        ...loras.map((l) => fileShape(l, active)),
        ...invalid.map(
          (f): InvalidLoraFileShape => ({
            kind: 'invalid',
            name: f.name,
            sizeBytes: f.sizeBytes,
            error: { [LORA_ERROR_PAYLOAD]: true, ...f.error, lora: f.error.lora ?? f.name },
          }),
        ),
      ].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    },
  }),
);

builder.queryField('activeLoras', (t) =>
  t.field({
    type: [LoraSelectionRef],
    description: 'The server-wide default set: applied to requests that give no `loras`.',
    resolve: (_root, _args, ctx) => ctx.service.activeLoras(),
  }),
);

builder.mutationField('loadLora', (t) =>
  t.field({
    type: LoraFileRef,
    description:
      'Adds a LoRA to the server-wide default set (or changes its strength). No engine is reloaded. On error the ' +
      'set is unchanged.',
    errors: { types: [ValidationError, LoraRequestError] },
    args: {
      name: t.arg.string({ required: true, description: 'Path relative to LORA_DIR.' }),
      strength: t.arg.float({ defaultValue: 1 }),
    },
    resolve: async (_root, { name, strength }, ctx) => {
      const info = await ctx.service.loadLora(name, strength ?? 1);
      return fileShape(info, ctx.service.activeLoras());
    },
  }),
);

builder.mutationField('unloadLora', (t) =>
  t.field({
    type: UnloadLoraPayload,
    description: 'Removes a LoRA from the server-wide default set.',
    errors: { types: [ValidationError, LoraRequestError] },
    args: { name: t.arg.string({ required: true }) },
    resolve: async (_root, { name }, ctx) => {
      const unloaded = await ctx.service.unloadLora(name);
      return { unloaded, active: ctx.service.activeLoras() };
    },
  }),
);
