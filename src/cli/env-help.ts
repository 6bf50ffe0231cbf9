/** @file The environment section of `fluxql serve --help`, generated from config.ts's table so it stays true. */
import { ENV_DOCS, type EnvDoc } from '../config.ts';

/** One line per variable: name, roles (when not every role reads it), meaning and default. */
export function formatEnvHelp(docs: Readonly<Record<string, EnvDoc>> = ENV_DOCS): string {
  const names = Object.keys(docs);
  const width = Math.max(...names.map((n) => n.length)) + 2;
  const lines = names.map((name) => {
    const d = docs[name]!;
    const roles = d.roles && d.roles.length < 3 ? ` [${d.roles.join(', ')}]` : '';
    const def = d.default !== undefined ? ` (default: ${d.default})` : '';
    return `  ${name.padEnd(width)}${d.doc}${def}${roles}`;
  });
  return `\nEnvironment (empty counts as unset; [roles] marks variables only some --role values read):\n${lines.join('\n')}\n`;
}
