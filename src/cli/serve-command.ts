/** @file `fluxql serve`: starts the server (see src/main.ts). */
export async function runServe(args: { role: string; engine?: string }): Promise<void> {
  const main = await import('../main.ts');
  await main.serveFromEnv({ role: args.role, engine: args.engine });
}
