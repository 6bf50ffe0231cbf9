/**
 * @file Entry module of the ONNX engine child process (`client.ts` starts it beside itself, in source or compiled
 * form). A composition root: the only file in `src/` that imports the engine compiler (`engines/compiler/port.ts`),
 * because the child is started from its own file and has no caller to receive the compiler from. Everything else
 * sees the compiler only as `EngineCompilerPort` (`../flux/compiler-port.ts`).
 */
import { engineCompiler } from '../../../engines/compiler/port.ts';
import { serveEngineHost } from './host.ts';

serveEngineHost(engineCompiler);
