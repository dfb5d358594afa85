/**
 * The service under test for the console's browser tests: the real service in-process (API + worker,
 * real PostgreSQL, Redis and RabbitMQ, names unique to the test), the project's security-platform
 * simulator, and CONSOLE_USERS with one operator and one viewer hashed by the auth code's own function.
 */
import net from 'node:net';
import { createContext } from '../../../src/context.js';
import { hashPassword, SCRYPT_N } from '../../../src/http/session.js';
import { startService } from '../../../src/main.js';
import { createSimulator, type Simulator } from '../../../src/simulator/server.js';
import {
  SECPLAT_PASSWORD, callbackBody, captureLogger, cleanupNames, postCallback, seedInventory, testConfig, testDb, testEnv,
} from '../../helpers/env.js';

export const ADMIN_TOKEN = 'e2e-admin-token-0000000001';
export const VIEWER_TOKEN = 'e2e-viewer-token-000000001';
export const OPERATOR = { name: 'olivia.ops', password: 'operator-password-e2e', role: 'operator' } as const;
export const VIEWER = { name: 'victor.view', password: 'viewer-password-e2e!', role: 'viewer' } as const;

let consoleUsers: Promise<string> | undefined;

/** CONSOLE_USERS for both people, hashed once per run (scrypt at its lowest accepted cost: tests, not secrets). */
export function consoleUsersEnv(): Promise<string> {
  consoleUsers ??= Promise.all([OPERATOR, VIEWER].map(async (u) => `${u.name}:${u.role}:${await hashPassword(u.password, SCRYPT_N.min)}`))
    .then((entries) => entries.join(','));
  return consoleUsers;
}

export interface Rig {
  url: string;
  sim: Simulator;
  env: Record<string, string>;
  db: ReturnType<typeof testDb>;
  /** Sends a callback of these domains (seeded in the inventory as uid-<domain>); `body` replaces the vendor's usual one. */
  callback(messageId: string, domains: string[], body?: unknown): Promise<void>;
  /** GET or POST on the operator API with a bearer token (test setup and checks, never the page under test). */
  api<T = unknown>(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
  isClosed(): Promise<boolean>;
}

/** Starts the simulator and the service (ROLE=all); close() stops both and removes the test's names. */
export async function startRig(overrides: Record<string, string> = {}): Promise<Rig> {
  const sim = createSimulator({ password: SECPLAT_PASSWORD });
  const { url: simUrl } = await sim.start(0, '127.0.0.1');
  const env = testEnv({
    ROLE: 'all', ADMIN_TOKEN, VIEWER_TOKEN, CONSOLE_USERS: await consoleUsersEnv(), SECPLAT_BASE_URL: simUrl,
    INSTANCE_ID: 'e2e-worker-1', ...overrides,
  });
  const db = testDb();
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  try {
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
  } catch (err) {
    await sim.stop();
    await db.end();
    throw err;
  }
  const port = service.port;
  const url = `http://127.0.0.1:${port}`;
  let closed = false;
  return {
    url, sim, env, db,
    async callback(messageId, domains, body = callbackBody(messageId, domains)) {
      await seedInventory(db, domains);
      const res = await postCallback(url, body);
      if (res.status !== 200) throw new Error(`callback refused: ${res.status} ${JSON.stringify(res.body)}`);
    },
    async api(method, path, body, token = ADMIN_TOKEN) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      let parsed: unknown = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, body: parsed as never };
    },
    async close() {
      if (closed) return;
      closed = true;
      // Each step runs even when an earlier one fails; the first failure is reported.
      const failures: unknown[] = [];
      for (const step of [() => service!.stop(), () => sim.stop(), () => db.end(), () => cleanupNames(env)]) {
        try { await step(); } catch (err) { failures.push(err); }
      }
      if (failures.length > 0) throw failures[0];
    },
    async isClosed() {
      return closed && !(await accepts(port)) && db.totalCount === 0;
    },
  };
}

/** Whether something still accepts connections on the port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}
