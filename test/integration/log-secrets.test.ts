/**
 * Secrets never reach a log line, checked on a whole real flow at debug level: API and worker in one
 * process, the security-platform simulator, a token fetch, a 401 after the token was taken by another
 * client, and the refresh that follows. Every captured line is searched for every secret we know.
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import {
  CALLBACK_TOKEN, REDIS_URL, SECPLAT_PASSWORD, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, postCallback,
  seedInventory, statusCounts, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

describe('secrets in logs', function () {
  let sim: Simulator;
  let db: pg.Pool;
  let env: Record<string, string>;
  let service: Awaited<ReturnType<typeof startService>> | undefined;

  beforeEach(() => {
    db = testDb();
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  async function sharedToken(): Promise<string> {
    const redis = new Redis(REDIS_URL);
    try {
      return (await redis.hget(`${env.REDIS_KEY_PREFIX}:secplat:token`, 'token')) ?? '';
    } finally {
      redis.disconnect();
    }
  }

  it('when a full flow with a token fetch, a 401 and a refresh runs at debug level, then no line holds a password, a token or a bearer value (also for 401s and timeouts), and domain lines carry messageId and domain', async () => {
    const { logger, lines } = captureLogger('debug');
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 20, logger });
    const simUrl = (await sim.start()).url;
    env = testEnv({ ROLE: 'all', LOG_LEVEL: 'debug', SECPLAT_BASE_URL: simUrl, SECPLAT_BATCH_SIZE: '2', SECPLAT_TIMEOUT_MS: '1000' });
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger }));
    const url = `http://127.0.0.1:${service.port}`;

    // First callback: the first token is fetched and used.
    const idA = messageId();
    const domainsA = domainsFor(idA.slice(2, 10), 4);
    await seedInventory(db, domainsA);
    expect((await postCallback(url, callbackBody(idA, domainsA))).status).to.equal(200);
    await waitFor('batch A succeeded', async () => (await statusCounts(db, idA)).succeeded === 4);
    const firstToken = await sharedToken();
    expect(firstToken, 'a token is shared in Redis').to.have.length.greaterThan(10);

    // Another client takes the token: the next delete gets 401, and the worker refreshes.
    sim.invalidateToken();
    const idB = messageId();
    const domainsB = domainsFor(idB.slice(2, 10), 4);
    await seedInventory(db, domainsB);
    expect((await postCallback(url, callbackBody(idB, domainsB))).status).to.equal(200);
    await waitFor('batch B succeeded', async () => (await statusCounts(db, idB)).succeeded === 4);
    const secondToken = await sharedToken();

    expect(sim.stats().unauthorized, '401s answered').to.be.greaterThan(0);
    expect(sim.stats().tokenFetches).to.equal(2);
    expect(secondToken).to.not.equal(firstToken);

    // A slow platform: calls time out (axios errors carry the request headers) and are retried.
    sim.setOptions({ latencyMs: 1500 });
    const idC = messageId();
    const domainsC = domainsFor(idC.slice(2, 10), 2);
    await seedInventory(db, domainsC);
    expect((await postCallback(url, callbackBody(idC, domainsC))).status).to.equal(200);
    await waitFor('a timed-out call logged', async () => lines.some((l) => l.includes(idC) && l.includes('"domain retryable"')));
    sim.setOptions({ latencyMs: 20 });
    await waitFor('batch C succeeded', async () => (await statusCounts(db, idC)).succeeded === 2);
    expect(await sharedToken(), 'no refresh for a timeout').to.equal(secondToken);

    await service.stop();
    service = undefined;

    expect(lines.length, 'lines were captured').to.be.greaterThan(10);
    const text = lines.join('');
    expect(text, 'the flow itself was logged').to.include('callback stored');
    expect(lines.some((l) => l.includes('"tokenGeneration"')), 'the token fetch and the 401 were logged').to.equal(true);
    expect(lines.filter((l) => l.includes('"domain retryable"')).length, 'the timeouts were logged').to.be.greaterThan(0);

    for (const [what, secret] of [
      ['SECPLAT_PASSWORD', SECPLAT_PASSWORD], ['CALLBACK_TOKEN', CALLBACK_TOKEN], ['first access token', firstToken], ['second access token', secondToken],
    ] as const) {
      const leaking = lines.filter((l) => l.includes(secret));
      expect(leaking, `${what} appears in ${leaking.length} line(s): ${leaking[0] ?? ''}`).to.deep.equal([]);
    }
    const bearer = lines.filter((l) => /Bearer [^[]/i.test(l));
    expect(bearer, `a bearer value is logged: ${bearer[0] ?? ''}`).to.deep.equal([]);
    const amqpPassword = lines.filter((l) => l.includes('guest:guest@'));
    expect(amqpPassword, `the RabbitMQ password is logged: ${amqpPassword[0] ?? ''}`).to.deep.equal([]);

    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const domainLines = parsed.filter((p) => p.domain !== undefined);
    for (const p of domainLines) {
      expect(p.domain).to.be.a('string');
      expect(p.messageId, `line without messageId: ${JSON.stringify(p)}`).to.be.a('string').and.match(/^pm[0-9a-f]{32}$/);
    }
    for (const [id, domains] of [[idA, domainsA], [idB, domainsB], [idC, domainsC]] as const) {
      for (const d of domains) {
        const deleted = domainLines.filter((p) => p.domain === d && p.message === 'domain deleted');
        expect(deleted.map((p) => p.messageId), `"domain deleted" line for ${d}`).to.deep.equal([id]);
      }
    }
  });
});
