/**
 * npm run console:user -- <name> <viewer|operator>: reads a password and prints the CONSOLE_USERS entry
 * (`name:role:scrypt$N$salt$key`) to paste into the service's configuration. The password is read from
 * stdin: typed without echo (twice) on a terminal, or the first line of a pipe. It never appears in
 * argv, where `ps` and the shell history would keep it.
 */
import { CONSOLE_USER_NAME, RESERVED_NAMES } from '../src/config.js';
import { hashPassword } from '../src/http/session.js';
import { UsageError, createProgram, runCli } from './cli.js';

const MIN_PASSWORD = 12;
const MAX_PASSWORD = 1024; // what the login form accepts

await runCli(async () => {
  const program = createProgram('console-user', 'Print a CONSOLE_USERS entry for a person who signs in to the console; the password is read from stdin.')
    .argument('<name>', 'the user name people sign in with and the audit shows (letters, digits, ".", "_", "@", "-")')
    .argument('<role>', 'viewer (read) or operator (read, replay, acknowledge, resolve)')
    .addHelpText('after', [
      '',
      'On a terminal the password is asked twice, without echo. From a pipe the first line is the password:',
      '  printf "%s\\n" "$PASSWORD" | npm run --silent console:user -- alice operator',
      '',
      'Only the entry goes to stdout. Add it to CONSOLE_USERS (entries separated by commas); it contains "$",',
      'so quote it in single quotes in a shell, and write each "$" as "$$" in a docker-compose file.',
      '',
      'Exit codes: 0 printed, 2 usage error (bad name or role, passwords differ, password too short).',
    ].join('\n'))
    .parse();
  const [name, role] = program.args as [string, string];
  if (!CONSOLE_USER_NAME.test(name) || RESERVED_NAMES.has(name)) {
    throw new UsageError(`name must be 1-64 letters, digits, ".", "_", "@" or "-", and not ${[...RESERVED_NAMES].join(', ')}`);
  }
  if (role !== 'viewer' && role !== 'operator') throw new UsageError('role must be viewer or operator');

  const password = process.stdin.isTTY ? await askTwice() : await firstLine(process.stdin);
  if (password.length < MIN_PASSWORD) throw new UsageError(`the password must be at least ${MIN_PASSWORD} characters`);
  if (password.length > MAX_PASSWORD) throw new UsageError(`the password must be at most ${MAX_PASSWORD} characters`);

  process.stdout.write(`${name}:${role}:${await hashPassword(password)}\n`);
  if (process.stderr.isTTY) process.stderr.write('Add this entry to CONSOLE_USERS (comma-separated), in single quotes in a shell.\n');
  return 0;
});

async function askTwice(): Promise<string> {
  const stdin = process.stdin;
  // Echo off before the first prompt appears and until the last line is read: nothing typed is ever shown.
  stdin.setRawMode(true);
  const lines = rawLines(stdin);
  try {
    process.stderr.write('Password: ');
    const first = await lines.next();
    process.stderr.write('\nAgain: ');
    const second = await lines.next();
    process.stderr.write('\n');
    if (first !== second) throw new UsageError('the two passwords differ');
    return first;
  } finally {
    lines.close();
    stdin.setRawMode(false);
    stdin.pause();
  }
}

/** Lines typed on a raw-mode terminal: Enter ends one, Backspace erases, Ctrl-C cancels, Ctrl-D ends input. */
function rawLines(stdin: NodeJS.ReadStream): { next(): Promise<string>; close(): void } {
  const ready: string[] = [];
  let current = '';
  let failed: Error | undefined;
  let waiting: { resolve(line: string): void; reject(err: Error): void } | undefined;
  const settle = () => {
    if (!waiting) return;
    const w = waiting;
    if (ready.length > 0) { waiting = undefined; w.resolve(ready.shift()!); } else if (failed) { waiting = undefined; w.reject(failed); }
  };
  const onData = (chunk: Buffer) => {
    for (const ch of chunk.toString('utf8')) {
      if (ch === '\r' || ch === '\n' || ch === '\u0004') { ready.push(current); current = ''; }
      else if (ch === '\u0003') failed = new UsageError('cancelled');
      else if (ch === '\u007f' || ch === '\b') current = [...current].slice(0, -1).join('');
      else if (ch >= ' ') current += ch;
    }
    settle();
  };
  stdin.on('data', onData);
  stdin.resume();
  return {
    next: () => new Promise<string>((resolve, reject) => { waiting = { resolve, reject }; settle(); }),
    close: () => { stdin.off('data', onData); },
  };
}

/** The first line of a piped stdin (without its line ending); the rest is ignored. */
async function firstLine(stream: NodeJS.ReadableStream): Promise<string> {
  let text = '';
  for await (const chunk of stream) {
    text += chunk.toString();
    if (text.includes('\n')) break;
  }
  return text.split('\n')[0]!.replace(/\r$/, '');
}
