/**
 * CPU and memory of processes and of the whole machine, read from Linux /proc: what the bench samples
 * around each measured window (its own load generator included).
 */
import { readFileSync } from 'node:fs';
import { sleep } from '../src/lib/timing.js';

/** Resident set size of a process in kB, from /proc/<pid>/status (VmRSS); undefined once it is gone. */
export function rssKb(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** CPU time (user + system) a process has used, in ms, from /proc/<pid>/stat (clock ticks of 10 ms). */
export function cpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime, stime (fields 14 and 15 of the file)
  } catch {
    return undefined;
  }
}

export interface MachineCpu { busy: number; total: number }

/** Busy and total jiffies of the whole machine, from /proc/stat; two readings give its CPU use. */
export function machineCpu(): MachineCpu {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
  return { busy: total - idle, total };
}

/** Share (0..1) of all cores busy between two readings. */
export const busyShare = (from: MachineCpu, to: MachineCpu): number => (to.busy - from.busy) / Math.max(1, to.total - from.total);

/** How busy the machine is over `ms` (in %, all cores = 100): other runs that share it lower every figure. */
export async function machineBusyPercent(ms: number): Promise<number> {
  const first = machineCpu();
  await sleep(ms);
  return busyShare(first, machineCpu()) * 100;
}
