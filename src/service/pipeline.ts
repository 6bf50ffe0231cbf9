/**
 * @file The one place the service layer reaches into `pipeline/`, and only through its public `index.ts`: the
 * step-level executor contract and image encoding. One file keeps the layer boundary easy to check.
 */
export * from '../pipeline/index.ts';
