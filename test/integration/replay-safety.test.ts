/**
 * Only SELF_DOMAIN_DELETE items ever reach the security platform: not through a replay with --all, and not
 * through any other path that re-opens a row (stalled sweep, redelivery, a hand-edited row), because the
 * worker checks each item's reqType where it builds the call.
 */
import { expect } from 'chai';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import { replayBatches } from '../../src/pipeline/replay.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import {
  SECPLAT_PASSWORD, captureLogger, cleanupNames, messageId, postCallback, rand, seedInventory, statusCounts, testConfig,
  testDb, testEnv, waitFor,
} from '../helpers/env.js';

describe('replay safety: items that are not deletions', function () {
  let sim: Simulator;
  let db: pg.Pool;
  let env: Record<string, string>;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let url: string;

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 5 });
    env = testEnv({ SECPLAT_BASE_URL: (await sim.start()).url });
    db = testDb();
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    url = `http://127.0.0.1:${service.port}`;
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  /** A batch with one item the vendor asked to ADD (its domain is in the inventory), one deletion and one unknown domain. */
  async function sendMixedBatch() {
    const tag = rand();
    const id = messageId();
    const keep = `keep.${tag}.example.com`;
    const gone = `gone.${tag}.example.com`;
    const later = `later.${tag}.example.com`;
    await seedInventory(db, [keep, gone], (d) => (d === keep ? `u-keep-${tag}` : `u-gone-${tag}`));
    const body = {
      messageId: id,
      data: [
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_ADD', targetName: keep },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: gone },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: later },
      ],
    };
    expect((await postCallback(url, body)).status).to.equal(200);
    await waitFor('the batch ran once', async () => {
      const c = await statusCounts(db, id);
      return c.succeeded === 1 && c.unknown_domain === 1 && c.unsupported === 1;
    });
    return { id, tag, keep, gone, later, keepUid: `u-keep-${tag}` };
  }

  async function statusOf(id: string, domain: string): Promise<string> {
    const { rows } = await db.query<{ status: string }>('SELECT status FROM batch_domain WHERE message_id = $1 AND domain = $2', [id, domain]);
    return rows[0]!.status;
  }

  async function inventoryStatus(domain: string): Promise<string> {
    const { rows } = await db.query<{ status: string }>('SELECT status FROM cdn_domain WHERE domain = $1', [domain]);
    return rows[0]!.status;
  }

  it('when a batch holding a SELF_DOMAIN_ADD item is replayed with all, then only the unknown domain is re-opened and the added domain is never sent', async () => {
    const b = await sendMixedBatch();
    // The operator imports the missing domain and replays with --all, as the README recommends.
    await seedInventory(db, [b.later], () => `u-later-${b.tag}`);
    const result = await replayBatches(service!.ctx, [b.id], { all: true, dryRun: false });
    expect(result.reopened.map((r) => r.domain), 're-opened by --all').to.deep.equal([b.later]);

    await waitFor('the re-opened domain deleted', async () => (await statusOf(b.id, b.later)) === 'succeeded');
    expect(await statusOf(b.id, b.keep)).to.equal('unsupported');
    expect(await inventoryStatus(b.keep), 'the added domain stays in the inventory').to.equal('active');
    expect(sim.stats().deletedCounts, 'what the platform deleted').to.deep.equal({ [`u-gone-${b.tag}`]: 1, [`u-later-${b.tag}`]: 1 });
  });

  it('when a non-deletion item is re-opened by any other path, then the worker records it unsupported and never sends it', async () => {
    const b = await sendMixedBatch();
    // Whatever re-opened it (an old replay, a stalled sweep, a hand edit): the row is pending again.
    await db.query(`UPDATE batch_domain SET status = 'pending', finished_at = NULL WHERE message_id = $1 AND domain = $2`, [b.id, b.keep]);
    await seedInventory(db, [b.later], () => `u-later-${b.tag}`);
    await db.query(`UPDATE batch_domain SET status = 'pending', finished_at = NULL WHERE message_id = $1 AND domain = $2`, [b.id, b.later]);
    await service!.ctx.broker.publishJob({ messageId: b.id, attempt: 0 });

    await waitFor('the batch settled again', async () => (await statusOf(b.id, b.later)) === 'succeeded' && (await statusOf(b.id, b.keep)) === 'unsupported');
    const { rows } = await db.query<{ detail: string }>('SELECT detail FROM batch_domain WHERE message_id = $1 AND domain = $2', [b.id, b.keep]);
    expect(rows[0]!.detail).to.include('never sent');
    expect(await inventoryStatus(b.keep)).to.equal('active');
    expect(sim.stats().deletedCounts).to.not.have.property(b.keepUid);
  });
});
