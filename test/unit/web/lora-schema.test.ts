/**
 * The build-time LoRA switch of the web page: the selector is built only when the schema has a usable `loras`
 * query and `GenerateImageInput.loras`; checked against the committed schema and against extended copies of it.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loraQueryFrom } from '../../../web/lora-schema.ts';

const committed = readFileSync(new URL('../../../schema/schema.graphql', import.meta.url), 'utf8');

const LORA_TYPES = `
  type LoraFile { name: String! format: String! rank: Int! sizeBytes: Float! layers: [String!]! }
  input LoraInput { name: String! strength: Float }
  extend input GenerateImageInput { loras: [LoraInput!] }
`;

describe('loraQueryFrom', () => {
  it('follows the committed schema (a query only once it has both `loras` and the input field)', () => {
    const hasApi = /^\s+loras[(:]/m.test(committed) && /input GenerateImageInput[^}]*\bloras:/s.test(committed);
    if (hasApi) expect(loraQueryFrom(committed)).toMatch(/^query WebLoras \{ loras \{ name/);
    else expect(loraQueryFrom(committed)).toBeNull();
  });

  it('builds the query from the name and the descriptive leaf fields the schema has', () => {
    const sdl = `${committed}\n${LORA_TYPES}\nextend type Query { loras: [LoraFile!]! }`;
    expect(loraQueryFrom(sdl)).toBe('query WebLoras { loras { name format rank sizeBytes } }');
  });

  it('stays off when requests cannot carry LoRAs, or the query is not a plain list', () => {
    const noInput = `${committed}\ntype LoraFile { name: String! }\nextend type Query { loras: [LoraFile!]! }`;
    expect(loraQueryFrom(noInput)).toBeNull();
    const needsArgs = `${committed}\n${LORA_TYPES}\nextend type Query { loras(dir: String!): [LoraFile!]! }`;
    expect(loraQueryFrom(needsArgs)).toBeNull();
    const notList = `${committed}\n${LORA_TYPES}\nextend type Query { loras: LoraFile }`;
    expect(loraQueryFrom(notList)).toBeNull();
  });
});
