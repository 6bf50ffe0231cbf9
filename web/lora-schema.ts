/**
 * @file Build-time check of `schema/schema.graphql` for the LoRA API (landing separately): the page shows its LoRA
 * selector only when the schema has a `loras` query listing objects with a `name`, and `GenerateImageInput` takes
 * `loras`. Returns the query the page should run (name plus known descriptive scalar fields), or null.
 */
import {
  buildSchema,
  getNamedType,
  getNullableType,
  isInputObjectType,
  isLeafType,
  isListType,
  isNonNullType,
  isObjectType,
} from 'graphql';

/** Descriptive fields shown next to a LoRA's name when the schema has them (as leaf types). */
const EXTRA_FIELDS = ['format', 'rank', 'sizeBytes', 'size'];

/** The `loras` query for the page, or null when the schema has no usable LoRA API. */
export function loraQueryFrom(sdl: string): string | null {
  const schema = buildSchema(sdl);
  const field = schema.getQueryType()?.getFields().loras;
  const input = schema.getType('GenerateImageInput');
  if (!field || !isInputObjectType(input) || !input.getFields().loras) return null;
  if (field.args.some((a) => isNonNullType(a.type) && a.defaultValue === undefined)) return null;
  const item = getNamedType(field.type);
  if (!isListType(getNullableType(field.type)) || !isObjectType(item) || !item.getFields().name) return null;
  const fields = item.getFields();
  const extra = EXTRA_FIELDS.filter((f) => {
    const type = fields[f]?.type;
    return type !== undefined && isLeafType(getNamedType(type));
  });
  return `query WebLoras { loras { ${['name', ...extra].join(' ')} } }`;
}
