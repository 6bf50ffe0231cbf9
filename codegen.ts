/**
 * @file GraphQL codegen (`npx tsx codegen.ts`): prints the committed `schema/schema.graphql` from the code-first
 * schema and types the test operations (`test/utils/operations.graphql` → `test/utils/gql/`). The schema test
 * runs the same config in memory and fails when the committed files are stale.
 */
import { type CodegenConfig, generate } from '@graphql-codegen/cli';
import { printSchema } from 'graphql';
import { schema } from './src/api/schema/index.ts';

/** The codegen configuration (schema given as SDL, so no loader has to import TypeScript). */
export const codegenConfig: CodegenConfig = {
  schema: printSchema(schema),
  documents: ['test/utils/operations.graphql'],
  silent: true,
  generates: {
    'schema/schema.graphql': { plugins: ['schema-ast'] },
    'test/utils/gql/': {
      preset: 'client',
      presetConfig: { fragmentMasking: false },
      config: { useTypeImports: true, enumsAsTypes: true, importExtension: '.ts', emitLegacyCommonJSImports: false },
    },
  },
};

/** Runs codegen; writes the files unless `write` is false, and returns what it produced. */
export async function runCodegen(write = true): Promise<{ filename: string; content: string }[]> {
  return generate(codegenConfig, write);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const files = await runCodegen(true);
  for (const f of files) console.log(`wrote ${f.filename}`);
}
