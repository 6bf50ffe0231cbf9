/**
 * Build-time constant from `vite.config.ts`: the `loras` query the page may run, derived from
 * `schema/schema.graphql`; null when the schema has no usable `loras` query (the LoRA selector then stays hidden).
 */
declare const __LORA_QUERY__: string | null;
