/**
 * @file Registers every type on the builder (side-effect imports) and builds the schema once.
 */
import { builder } from '../builder.ts';
import './errors.ts';
import './model.ts';
import './lora.ts';
import './job.ts';
import './generate.ts';
import './progress.ts';

/** The executable GraphQL schema. */
export const schema = builder.toSchema({ sortSchema: false });
