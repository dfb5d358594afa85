/**
 * npm run alarms -- [messageId…]: the alarm rows of some batches (or of a time window) together with each
 * batch's current state, replacing ad-hoc `tag LIKE '%<messageId>%'` queries on sys_task_process_alarm.
 * npm run alarms -- ack|resolve <id…>: move alarms along their lifecycle (open → acknowledged → resolved).
 */
import os from 'node:os';
import { InvalidArgumentError, Option } from 'commander';
import { alarmReport, FAILING_STATUSES as FAILING } from '../src/ops/reports.js';
import { ALARM_STATES, type AlarmLifecycleRow, type AlarmState } from '../src/store/alarm-lifecycle.js';
import { auditedAlarmStep } from '../src/store/audit.js';
import { createProgram, escapeControl, formatCounts, formatTable, integer, runCli, withContext } from './cli.js';
const UNITS: Record<string, number> = { m: 60_000, h: 3_600_000, d: 86_400_000 };

const FORMAT = 'must be an ISO date or date-time (2024-05-01, 2024-05-01T08:00:00Z) or a look-back like 30m, 6h, 2d.';

/**
 * An ISO date/time ("2024-05-01", "2024-05-01T08:00:00+08:00") or a look-back such as 30m, 6h, 2d, from
 * 1970 on: alarms are newer than that, and an earlier time (99999999d reaches past year -270000) can fall
 * outside what JavaScript or PostgreSQL can hold, which used to end in a stack trace.
 */
function parseSince(value: string): Date {
  const text = value.trim();
  const rel = /^(\d+)([mhd])$/.exec(text);
  const day = /^(\d{4})-(\d{2})-(\d{2})/.exec(text);
  let ms: number;
  if (rel) {
    ms = Date.now() - Number(rel[1]) * UNITS[rel[2]!]!; // -Infinity for absurdly many digits
  } else if (day) {
    // V8 quietly rolls 2024-02-30 over to March 1st; a day that does not exist is a typo.
    const [y, m, d] = day.slice(1).map(Number) as [number, number, number];
    const calendar = new Date(Date.UTC(y, m - 1, d));
    if (calendar.getUTCMonth() !== m - 1 || calendar.getUTCDate() !== d) throw new InvalidArgumentError(FORMAT);
    ms = new Date(text).getTime();
  } else {
    throw new InvalidArgumentError(FORMAT);
  }
  if (Number.isNaN(ms)) throw new InvalidArgumentError(FORMAT);
  if (ms < 0) throw new InvalidArgumentError('must not be before 1970-01-01T00:00:00Z.');
  return new Date(ms);
}

/** The OS user running the command: who acknowledged or resolved, unless --by says otherwise. */
function osUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    // A container user without a passwd entry.
    return process.env.USER ?? process.env.LOGNAME ?? 'unknown';
  }
}

const alarmId = integer(1);
const collectIds = (value: string, previous: number[] = []) => [...previous, alarmId(value)];

interface ListOptions { since?: Date; limit: number; json?: boolean; state?: AlarmState | 'all' }
interface StepOptions { note?: string; by: string; json?: boolean }

async function list(messageIds: string[], opts: ListOptions): Promise<number> {
  const states = opts.state === undefined ? undefined : opts.state === 'all' ? ALARM_STATES : [opts.state];
  return withContext(async ({ db }) => {
    // The same report the console shows (src/ops/reports.ts).
    const { alarms, batches } = await alarmReport(db, { messageIds, since: opts.since, limit: opts.limit, states });

    if (opts.json) {
      console.log(JSON.stringify({ alarms, batches }, null, 2));
      return 0;
    }
    console.log(alarms.length === 0 ? `no ${opts.state === 'all' ? '' : `${opts.state ?? 'open or acknowledged'} `}alarms matched` : formatTable(
      ['id', 'state', 'seen', 'raised', 'last seen', 'messageId', 'type', 'content'],
      alarms.map((a) => [a.id, a.state, a.occurrences, a.createdAt, a.lastSeenAt, a.messageId ?? '-', a.alarmType, a.content]),
    ));
    if (alarms.length === opts.limit) console.error(`showing the newest ${opts.limit} alarms; raise --limit or narrow --since to see more`);
    for (const b of batches) {
      console.log(`\nbatch ${escapeControl(b.messageId)}: ${formatCounts(b.counts)}`);
      if (b.failing.length > 0) {
        console.log(formatTable(['domain', 'status', 'attempts', 'detail', 'updated'], b.failing.map((d) => [d.domain, d.status, d.attempts, d.detail, d.updatedAt])));
      }
    }
    return 0;
  });
}

async function step(action: 'ack' | 'resolve', ids: number[], opts: StepOptions): Promise<number> {
  return withContext(async ({ db }) => {
    // With an audit row per alarm, in the same transaction (as the HTTP API does); --by is the actor.
    const changed: AlarmLifecycleRow[] = await auditedAlarmStep(db, action === 'ack' ? 'acknowledge' : 'resolve',
      { ids, note: opts.note }, { name: opts.by, role: null, via: 'cli' });
    if (opts.json) {
      console.log(JSON.stringify({ alarms: changed }, null, 2));
      return 0;
    }
    console.log(formatTable(['id', 'state', 'by', 'at', 'note', 'messageId', 'type'], changed.map((a) => action === 'ack'
      ? [a.id, a.state, a.acknowledgedBy, a.acknowledgedAt, a.ackNote, a.messageId ?? '-', a.alarmType]
      : [a.id, a.state, a.resolvedBy, a.resolvedAt, a.resolveNote, a.messageId ?? '-', a.alarmType])));
    return 0;
  });
}

await runCli(async () => {
  let run: () => Promise<number> = () => Promise.resolve(0);
  const program = createProgram('alarms', 'List alarms (sys_task_process_alarm) by messageId, time and state, with each batch\'s counts by status and its failing domains; acknowledge or resolve them.')
    // The list's options before a subcommand, the subcommand's after it: `ack 3 --json` is ack's --json.
    .enablePositionalOptions()
    .argument('[messageId...]', 'only alarms of these batches (exact messageIds, no LIKE)')
    .addOption(new Option('--state <state>', 'only alarms in this state (default: open and acknowledged)').choices([...ALARM_STATES, 'all']))
    .option('--since <date>', 'only alarms raised at or after this time: ISO date/date-time from 1970 on, or a look-back (30m, 6h, 2d)', parseSince)
    .option('--limit <n>', 'at most this many alarm rows, newest first', integer(1, 10_000), 100)
    .option('--json', 'print one JSON object {alarms, batches} instead of tables')
    .addHelpText('after', `
Failing domains are those with status ${FAILING.join(', ')}; replay them with \`npm run replay -- <messageId> --reason <why>\`.
An alarm goes open -> acknowledged (ack: someone is on it) -> resolved (a note says what fixed it). A batch's
BATCH_FAILURES, JOB_PARKED and TOKEN_REJECTED alarms resolve by themselves once all its domains succeeded.
Exit codes: 0 shown or changed (also when nothing matched), 1 a dependency is down, 2 usage error (including
an unknown alarm id or a step its state does not allow; then nothing is changed).`)
    .action((messageIds: string[], opts: ListOptions) => { run = () => list([...new Set(messageIds)], opts); });
  program.command('ack')
    .description('acknowledge open alarms: someone is working on them (they stay listed until resolved)')
    .argument('<id...>', 'alarm ids (the id column of the list)', collectIds)
    .option('--note <text>', 'what is being done about it')
    .option('--by <name>', 'who acknowledges', osUser())
    .option('--json', 'print the changed alarms as JSON')
    .action((ids: number[], opts: StepOptions) => { run = () => step('ack', ids, opts); });
  program.command('resolve')
    .description('resolve open or acknowledged alarms, saying what fixed them; a resolved alarm is never re-opened (a new occurrence opens a new alarm)')
    .argument('<id...>', 'alarm ids (the id column of the list)', collectIds)
    .requiredOption('--note <text>', 'what fixed it (required)')
    .option('--by <name>', 'who resolves', osUser())
    .option('--json', 'print the changed alarms as JSON')
    .action((ids: number[], opts: StepOptions) => { run = () => step('resolve', ids, opts); });
  program.parse();
  return run();
});
