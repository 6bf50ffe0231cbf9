/**
 * @file GraphQL codegen (`npx tsx codegen.ts`): prints the committed `schema/schema.graphql` from the code-first
 * schema and types the test operations (`test/helpers/operations.graphql` → `test/helpers/gql/`). The schema test
 * runs the same config in memory and fails when the committed files are stale.
 */
import { createRequire } from 'node:module';
import { type CodegenConfig, generate } from '@graphql-codegen/cli';
import { schema } from './src/api/schema/index.ts';

// Print with the `graphql` instance Pothos built the schema with (Node's resolution, the CommonJS build). A plain
// import here is resolved by vite to the ESM build under vitest, and graphql refuses types from another realm.
const { printSchema } = createRequire(import.meta.url)('graphql') as typeof import('graphql');

/** The codegen configuration (schema given as SDL, so no loader has to import TypeScript). */
export const codegenConfig: CodegenConfig = {
  schema: printSchema(schema),
  documents: ['test/helpers/operations.graphql'],
  silent: true,
  generates: {
    'schema/schema.graphql': { plugins: ['schema-ast'] },
    'test/helpers/gql/': {
      preset: 'client',
      presetConfig: { fragmentMasking: false },
      config: { useTypeImports: true, enumsAsTypes: true, importExtension: '.ts', emitLegacyCommonJSImports: false },
    },
    // The web page's operations (`graphql()` calls in web/src). Root documents are merged into every output, so
    // the test operations are excluded here. String documents: the browser bundle needs no GraphQL parser.
    'web/src/gql/': {
      documents: ['web/src/**/*.ts', '!test/helpers/operations.graphql'],
      preset: 'client',
      presetConfig: { fragmentMasking: false },
      config: {
        useTypeImports: true,
        enumsAsTypes: true,
        importExtension: '.ts',
        emitLegacyCommonJSImports: false,
        documentMode: 'string',
      },
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
