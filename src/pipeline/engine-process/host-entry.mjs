// Bootstrap of the engine child process when running from sources: registers the TypeScript loader (the parent's
// loader hooks do not reach a child process), then loads the real entry.
import { register } from 'tsx/esm/api';

register();
await import('./host.ts');
