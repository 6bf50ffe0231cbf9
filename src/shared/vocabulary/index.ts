/**
 * @file The vocabulary the engine compiler (`engines/compiler`, a build-time tool) and the server share: elastic
 * modes (the one list of them, with their size tokens), the ORT execution providers, the FLUX transformer config, the LoRA layout of a compiled engine and the per-layer plan of a compressed
 * mode. Besides the engine manifests (`src/runtime/manifest.ts`), this is all `src/` knows of the compiler.
 */
export * from './lora-layout.ts';
export * from './modes.ts';
export * from './plan-types.ts';
export * from './providers.ts';
export * from './transformer-config.ts';
