/** @file `fluxql serve`: checks its settings, then starts the server (see src/main.ts). */
import { serveSettings } from '../serve-settings.ts';

export async function runServe(args: { role: string; engine?: string }): Promise<void> {
  // Before the server's modules load: a bad setting fails at once.
  const settings = serveSettings({ role: args.role, engine: args.engine }, process.env);
  const main = await import('../main.ts');
  await main.serve(settings);
}
