/**
 * @file The one Pothos schema builder (complex-app shape). Every `schema/*.ts` file registers its types on it as
 * a side effect; `schema/index.ts` imports them all and builds the schema.
 */
import SchemaBuilder from '@pothos/core';
import DataloaderPlugin from '@pothos/plugin-dataloader';
import ErrorsPlugin from '@pothos/plugin-errors';
import RelayPlugin from '@pothos/plugin-relay';
import SimpleObjectsPlugin from '@pothos/plugin-simple-objects';
import ValidationPlugin from '@pothos/plugin-validation';
import { type Caller, type GenerationService, toValidationError } from '../service/index.ts';

/** Per-request (or per-WebSocket-operation) context. */
export interface ApiContext {
  service: GenerationService;
  /** Origin used to turn image paths into absolute URLs, e.g. `http://127.0.0.1:8000`. */
  baseUrl: string;
  /** Who asks (from the API key); absent when the server has no keys. Jobs are scoped to it. */
  caller?: Caller;
  /** The absolute URL of a stored image path, signed when keys are on (see `auth.ts`). */
  urlOf(path: string): string;
}

/** The builder; see the file comment. */
export const builder = new SchemaBuilder<{
  Context: ApiContext;
  DefaultFieldNullability: false;
  Scalars: {
    ID: { Input: string; Output: string };
  };
}>({
  // Errors must wrap Validation so that input failures become union members (unsafelyHandleInputErrors).
  plugins: [ErrorsPlugin, ValidationPlugin, RelayPlugin, DataloaderPlugin, SimpleObjectsPlugin],
  defaultFieldNullability: false,
  errors: { unsafelyHandleInputErrors: true },
  validation: {
    // One error type for every input problem, naming the field as the service would.
    validationError: (failure) =>
      toValidationError(
        failure.issues.map((i) => ({
          message: i.message,
          // Issues on an input object arrive prefixed by the argument name (`input.prompt`): keep the field only.
          path: (i.path ?? [])
            .map((p) => (typeof p === 'object' && p !== null && 'key' in p ? p.key : p))
            .filter((p) => p !== 'input'),
        })),
      ),
  },
  relay: { clientMutationId: 'omit', cursorType: 'String' },
});

builder.queryType({});
builder.mutationType({});
builder.subscriptionType({});
