/**
 * @file Resident memory of a process and all its descendants, read from `/proc` (Linux only): the server's main
 * process plus its engine child (and anything they start).
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Parent pid of every live process. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      // Field 4 of /proc/<pid>/stat, after the `(comm)` field that may itself hold spaces.
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      out.set(Number(name), ppid);
    } catch {
      // The process ended while we read.
    }
  }
  return out;
}

/** `root` and its descendants. */
export function processTree(root: number): number[] {
  const byParent = new Map<number, number[]>();
  for (const [pid, ppid] of parents()) byParent.set(ppid, [...(byParent.get(ppid) ?? []), pid]);
  const out: number[] = [];
  const visit = (pid: number) => {
    out.push(pid);
    for (const c of byParent.get(pid) ?? []) visit(c);
  };
  visit(root);
  return out;
}

/** Resident set size of one process in bytes (VmRSS), 0 when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Summed resident memory of `root` and its descendants, with the part of each process. */
export function treeRss(root: number): { total: number; byPid: Record<number, number> } {
  const byPid: Record<number, number> = {};
  let total = 0;
  for (const pid of processTree(root)) {
    const r = rssBytes(pid);
    byPid[pid] = r;
    total += r;
  }
  return { total, byPid };
}

/** CPU seconds (user + system) `root` and its live descendants have used so far. */
export function treeCpuSeconds(root: number): number {
  const tick = 100; // USER_HZ: clock ticks per second on Linux
  let ticks = 0;
  for (const pid of processTree(root)) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `(comm) `.
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // Gone.
    }
  }
  return ticks / tick;
}
