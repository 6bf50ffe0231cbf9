/**
 * @file Document limits of GraphQL, applied by both transports (they share yoga's envelop plugins): depth,
 * aliases, lexical tokens (checked while parsing, so a huge document is never parsed whole), cost and directives
 * from graphql-armor, and a rule of ours capping `generateImage` fields per operation. A refused document gets one
 * GraphQL error (HTTP 400) whose `extensions.code` says which limit, and nothing is executed or queued.
 */
import { costLimitPlugin } from '@escape.tech/graphql-armor-cost-limit';
import { maxAliasesPlugin } from '@escape.tech/graphql-armor-max-aliases';
import { maxDepthPlugin } from '@escape.tech/graphql-armor-max-depth';
import { maxDirectivesPlugin } from '@escape.tech/graphql-armor-max-directives';
import { maxTokensPlugin } from '@escape.tech/graphql-armor-max-tokens';
import type { GraphQLError, ValidationContext, ValidationRule } from 'graphql';
import { createGraphQLError, type Plugin } from 'graphql-yoga';

/** The limits (see `config.ts`). */
export interface DocumentLimits {
  maxDepth: number;
  maxAliases: number;
  maxTokens: number;
  maxCost: number;
  maxDirectives: number;
  /** Most `generateImage` fields in one document. */
  maxGenerations: number;
}

/** The limits used when none are given (the defaults of `config.ts`). */
export const DEFAULT_DOCUMENT_LIMITS: DocumentLimits = {
  maxDepth: 12,
  maxAliases: 15,
  maxTokens: 2000,
  maxCost: 5000,
  maxDirectives: 50,
  maxGenerations: 4,
};

/** Gives armor's rejection a stable code and HTTP 400 (yoga reads `extensions.http.status`). */
function typed(code: string) {
  return {
    propagateOnRejection: true,
    onReject: [
      (_ctx: ValidationContext | null, error: GraphQLError) => {
        Object.assign(error.extensions as Record<string, unknown>, { code, http: { status: 400 } });
      },
    ],
  };
}

/**
 * Counts `generateImage` fields on the mutation type (aliases included) across the document; one over the limit
 * refuses the whole operation, so nothing is queued.
 */
function maxGenerationsRule(max: number): ValidationRule {
  return (context) => {
    let count = 0;
    let reported = false;
    return {
      Field(node) {
        if (node.name.value !== 'generateImage') return;
        if (context.getParentType() !== context.getSchema().getMutationType()) return;
        count++;
        if (count > max && !reported) {
          reported = true;
          // yoga's helper: the error must be of the graphql copy graphql-ws checks with `instanceof`.
          context.reportError(
            createGraphQLError(
              `At most ${max} generateImage fields per operation (MAX_GENERATIONS_PER_OPERATION); send more operations instead`,
              { nodes: [node], extensions: { code: 'TOO_MANY_GENERATIONS', http: { status: 400 } } },
            ),
          );
        }
      },
    };
  };
}

/** Codes of refused documents. */
const LIMIT_CODES = new Set([
  'MAX_TOKENS',
  'MAX_DEPTH',
  'MAX_ALIASES',
  'MAX_COST',
  'MAX_DIRECTIVES',
  'TOO_MANY_GENERATIONS',
]);

/**
 * Yoga answers parse errors with 200 for `Accept: application/json` (GraphQL over HTTP's legacy rule), which would
 * hide a refused document among successful replies; a status on the result itself takes precedence.
 */
const refusedIs400: Plugin = {
  onResultProcess({ result, setResult }) {
    if (Array.isArray(result) || !('errors' in result) || !result.errors) return;
    const refused = result.errors.some((e) => LIMIT_CODES.has(String(e.extensions?.code)));
    if (refused) setResult({ ...result, extensions: { ...result.extensions, http: { status: 400 } } });
  },
};

/** The envelop plugins enforcing `limits`. */
export function documentLimitPlugins(limits: DocumentLimits): Plugin[] {
  return [
    refusedIs400,
    maxTokensPlugin({ n: limits.maxTokens, ...typed('MAX_TOKENS') }),
    maxDepthPlugin({ n: limits.maxDepth, ...typed('MAX_DEPTH') }),
    maxAliasesPlugin({ n: limits.maxAliases, ...typed('MAX_ALIASES') }),
    costLimitPlugin({ maxCost: limits.maxCost, ...typed('MAX_COST') }),
    maxDirectivesPlugin({ n: limits.maxDirectives, ...typed('MAX_DIRECTIVES') }),
    {
      onValidate({ addValidationRule }) {
        addValidationRule(maxGenerationsRule(limits.maxGenerations));
      },
    },
  ] as Plugin[];
}
