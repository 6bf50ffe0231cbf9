// Worker bootstrap: registers the TypeScript loader inside the worker thread (hooks registered on the main thread,
// by bin/fluxql.js or a test runner, do not reach workers on Node 20), then loads the real entry.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
