/**
 * @file The engine processes a server started, found from /proc (no tools needed): the GPU checks kill the real
 * engine by pid, and the join checks pause it (SIGSTOP) so a request is queued while the engine batch runs.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';

/**
 * Pids of the running engine processes (`bin --serve`; a script engine such as the fake runs as `node bin --serve`)
 * whose parent is `pid`.
 */
export function engineChildren(pid: number, bin: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // After the parenthesised command: state, ppid, ...
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(ppid) !== pid || state === 'Z') continue;
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (cmd.some((a) => a.endsWith(basename(bin))) && cmd.includes('--serve')) out.push(Number(name));
    } catch {
      // the process ended while listing
    }
  }
  return out;
}
