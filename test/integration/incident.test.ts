/**
 * The production incident, replayed with real processes: two callbacks in the same second reach two
 * hosts while the shared token has expired. Also: the token invalidated from outside mid-batch.
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import {
  REDIS_URL, SECPLAT_PASSWORD, callbackBody, cleanupNames, domainsFor, messageId, postCallback, seedInventory,
  spawnService, statusCounts, testDb, testEnv, waitFor, type ServiceProcess,
} from '../helpers/env.js';
import { inTheTurnItHolds } from '../helpers/fault-rig.js';

describe('the incident: one shared token across worker processes', function () {
  let sim: Simulator;
  let simUrl: string;
  let db: pg.Pool;
  let env: Record<string, string>;
  let services: ServiceProcess[] = [];

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 60 });
    simUrl = (await sim.start()).url;
    db = testDb();
    env = testEnv({ SECPLAT_BASE_URL: simUrl, SECPLAT_BATCH_SIZE: '5', SECPLAT_CONCURRENCY: '4' });
  });

  afterEach(async () => {
    await Promise.all(services.map((s) => s.stop()));
    services = [];
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  async function seedExpiredToken(generation: number): Promise<void> {
    const redis = new Redis(REDIS_URL);
    await redis.hset(`${env.REDIS_KEY_PREFIX}:secplat:token`, { token: 'expired-token', expiresAt: String(Date.now() - 1000), generation: String(generation) });
    redis.disconnect();
  }

  async function storedGeneration(): Promise<number> {
    const redis = new Redis(REDIS_URL);
    const g = await redis.hget(`${env.REDIS_KEY_PREFIX}:secplat:token`, 'generation');
    redis.disconnect();
    return Number(g);
  }

  it('when two callbacks arrive in the same second at two processes with an expired token, then one token is fetched, no 401 is seen and every domain is deleted once', async () => {
    const idA = messageId();
    const idB = messageId();
    const domainsA = domainsFor(idA.slice(2, 10), 49);
    const domainsB = domainsFor(idB.slice(2, 10), 50);
    await seedInventory(db, [...domainsA, ...domainsB]);
    await seedExpiredToken(7);
    services = await Promise.all([spawnService({ ...env, INSTANCE_ID: 'host-a' }), spawnService({ ...env, INSTANCE_ID: 'host-b' })]);

    // The load balancer sends one callback to each host, in the same second.
    const [ra, rb] = await Promise.all([
      postCallback(services[0]!.url, callbackBody(idA, domainsA)),
      postCallback(services[1]!.url, callbackBody(idB, domainsB)),
    ]);
    expect(ra.body).to.deep.equal({ success: true, messageId: idA, message: 'OK', status: 0 });
    expect(rb.body).to.deep.equal({ success: true, messageId: idB, message: 'OK', status: 0 });

    await waitFor('all 99 domains succeeded', async () => {
      const [a, b] = [await statusCounts(db, idA), await statusCounts(db, idB)];
      return a.succeeded === 49 && b.succeeded === 50;
    }, 60_000);

    const stats = sim.stats();
    expect(stats.tokenFetches, 'token fetches').to.equal(1);
    expect(stats.unauthorized, '401 answers').to.equal(0);
    expect(Object.keys(stats.deletedCounts)).to.have.length(99);
    expect(Math.max(...Object.values(stats.deletedCounts)), 'most deletions of one id').to.equal(1);
    expect(await storedGeneration()).to.equal(8);
    const { rows } = await db.query<{ n: number }>(
      `SELECT count(DISTINCT claimed_by)::int AS n FROM batch_domain WHERE message_id = ANY($1)`, [[idA, idB]]);
    expect(rows[0]!.n).to.equal(0); // every claim released
    const { rows: inv } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM cdn_domain WHERE status = 'deleted' AND domain = ANY($1)`, [[...domainsA, ...domainsB]]);
    expect(inv[0]!.n).to.equal(99);
  });

  it('when another client invalidates the token mid-batch, then the workers refresh it once between them and finish every domain', async () => {
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 200);
    await seedInventory(db, domains);
    services = await Promise.all([spawnService({ ...env, INSTANCE_ID: 'w1' }), spawnService({ ...env, INSTANCE_ID: 'w2', ROLE: 'worker' })]);
    sim.setOptions({ latencyMs: 150 });

    expect((await postCallback(services[0]!.url, callbackBody(id, domains))).status).to.equal(200);
    // Invalidated in the very turn the first replies land: most of the 200 domains are still to be sent
    // (at most 8 calls of 5 are in flight), so the workers are bound to meet the 401s.
    await inTheTurnItHolds('the first deletions', () => sim.stats().entriesReceived >= 20, 30_000);
    sim.invalidateToken();
    expect(sim.stats().entriesReceived, 'domains deleted when the token was invalidated').to.be.below(100);

    await waitFor('all 200 domains succeeded', async () => (await statusCounts(db, id)).succeeded === 200, 60_000);
    const stats = sim.stats();
    expect(stats.unauthorized, '401s seen after the invalidation').to.be.greaterThan(0);
    expect(stats.tokenFetches, 'initial fetch + one coordinated refresh').to.equal(2);
    expect(Math.max(...Object.values(stats.deletedCounts))).to.equal(1);
    expect(Object.keys(stats.deletedCounts)).to.have.length(200);
  });
});
