/**
 * The bench's report: the JSON written to bench/results/<timestamp>.json and the tables printed from it.
 * Each section prints its own table (its module's `render`); this module holds the shared cell formats,
 * the header line and the closing PROCESSES line.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { BenchSection } from './context.js';
import type { ProcNote } from './services.js';
import { round } from './stats.js';

/** A number for a table cell; blank when missing. */
export const num = (v: unknown, digits = 0): number | string => (typeof v === 'number' && Number.isFinite(v) ? round(v, digits) : '');
/** A share (0..1) as a percentage cell. */
export const pct = (v: unknown): string => (typeof v === 'number' && Number.isFinite(v) ? `${round(v * 100, 1)} %` : '');
/** kB as MB. */
export const mb = (kb: unknown): number | string => (typeof kb === 'number' && Number.isFinite(kb) ? round(kb / 1024, 1) : '');
/** An error cell, kept short. */
export const errorCell = (e: unknown): string => `ERROR: ${String(e).slice(0, 100)}`;

export interface Machine {
  cpus: number; cpuModel?: string; memGb: number; node: string; postgres?: { v: string; sc: string };
  backgroundCpuPercent: number; loadavgAtStart: number[]; loadavgAtEnd: number[];
}

export interface Report {
  command: string; startedAt: Date; finishedAt: Date; durationSec: number; plan: unknown; machine: Machine;
  serviceConfig: Record<string, unknown>; results: Record<string, unknown>; processes: ProcNote[];
}

function header(r: Report): string {
  const m = r.machine;
  return `${r.command}   ${new Date(r.startedAt).toISOString()}   ${m.cpus} × ${m.cpuModel ?? 'cpu'}, Node ${m.node}, `
    + `PostgreSQL ${m.postgres?.v ?? '?'} (synchronous_commit=${m.postgres?.sc ?? '?'}), ${round(r.durationSec)} s, `
    + `machine ${round(m.backgroundCpuPercent)} % busy before start`;
}

function processesLine(processes: ProcNote[]): string {
  const noisy = processes.filter((p) => p.errorLines > 0 || p.killed || p.exitCode !== 0);
  return noisy.length === 0
    ? `PROCESSES  ${processes.length} service processes, all stopped cleanly on SIGTERM (exit 0), no error log lines`
    : `PROCESSES  ${noisy.map((p) => `${p.scenario}/${p.process}: exit ${String(p.exitCode)}${p.killed ? ' (SIGKILLed after 10 s)' : ''}, ${p.errorLines} error lines, stop ${p.stopMs} ms`
      + `${p.firstErrors.length > 0 ? `; first: ${p.firstErrors.join(' | ')}` : ''}`).join('; ')}`;
}

/** The printed report: header, one block per section that ran (in section order), processes. */
export function renderReport(r: Report, sections: readonly BenchSection<unknown>[]): string {
  const out = [header(r)];
  for (const s of sections) {
    if (s.name in r.results) out.push('', ...s.render(r.results[s.name]));
  }
  out.push('', processesLine(r.processes));
  return out.join('\n');
}

/** Writes the report as `<dir>/<startedAt>.json`; returns the file's path. The layout is the sections' results at the top level. */
export function writeReport(r: Report, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${r.startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  const { results, ...rest } = r;
  writeFileSync(file, `${JSON.stringify({ ...rest, ...results, processes: r.processes }, null, 2)}\n`);
  return file;
}
