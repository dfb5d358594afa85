/**
 * Bad callbacks, fuzzed (issue 3, scenario 12): random bytes, truncated and deeply nested JSON, huge
 * strings, unicode hostnames, 10k items, wrong types and headers. Each must get a 4xx in the vendor's
 * reply shape, nothing may be stored, and the process must stay up. The random cases come from a seeded
 * generator: a failure names its FUZZ_SEED, and `FUZZ_SEED=<n> npm run test:faults` replays it.
 */
import net from 'node:net';
import { expect } from 'chai';
import { CALLBACK_TOKEN, callbackBody, domainsFor, messageId } from '../helpers/env.js';
import { FaultRig, prng, readiness, type Batch } from '../helpers/fault-rig.js';

interface Case { name: string; body: string | Buffer; headers?: Record<string, string> }

const TABLES = ['callback_audit', 'batch', 'batch_domain', 'sys_task_process_alarm', 'cdn_domain'];

describe('faults: fuzzed bad callbacks', function () {
  let rig: FaultRig | undefined;

  afterEach(async function () {
    await rig?.close(this.currentTest?.state === 'failed');
    rig = undefined;
  });

  /**
   * A valid callback plus one item whose targetName (and optional extra fields) are raw JSON text: built as
   * text because JSON.stringify of a 100k-deep value would overflow this process's stack.
   */
  function withRawItem(id: string, domains: string[], targetNameJson: string, extraItemJson = ''): string {
    const good = JSON.stringify(callbackBody(id, domains));
    return `${good.slice(0, -'],"messageId":"'.length - id.length - 2)},`
      + `{"percent":1.0,"process":false,"reqType":"SELF_DOMAIN_DELETE","targetName":${targetNameJson}${extraItemJson}}],"messageId":"${id}"}`;
  }

  /** Posts every case; returns those not refused with a 4xx in the vendor's reply shape. */
  async function notRefused(url: string, all: Case[]): Promise<string[]> {
    const wrong: string[] = [];
    for (const c of all) {
      const res = await fetch(`${url}/api/pm/pipe/callback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-callback-token': CALLBACK_TOKEN, ...c.headers },
        body: c.body,
      });
      const text = await res.text();
      let reply: { success?: unknown; status?: unknown } = {};
      try { reply = JSON.parse(text) as typeof reply; } catch { /* reported below */ }
      if (res.status < 400 || res.status > 499 || reply.success !== false || reply.status !== 1) {
        wrong.push(`${c.name}: HTTP ${res.status} ${text.slice(0, 160)}`);
      }
    }
    return wrong;
  }

  async function rowCounts(r: FaultRig): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const t of TABLES) out[t] = (await r.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t}`)).rows[0]!.n;
    return out;
  }

  /** The cases: fixed shapes plus `n` random ones drawn from `rnd`. */
  function cases(rnd: () => number, n: number): Case[] {
    const id = messageId();
    const ok = domainsFor(id.slice(2, 12), 3);
    const good = JSON.stringify(callbackBody(id, ok));
    // The valid callback with one more item carrying `targetName`.
    const valid = (targetName: unknown) => JSON.stringify({
      ...callbackBody(id, ok), data: [...callbackBody(id, ok).data, { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName }],
    });
    const validRaw = (targetNameJson: string) => withRawItem(id, ok, targetNameJson);
    const int = (max: number) => Math.floor(rnd() * max);
    const bytes = (len: number) => Buffer.from(Array.from({ length: len }, () => int(256)));
    const pick = <T>(xs: T[]): T => xs[int(xs.length)]!;

    const fixed: Case[] = [
      { name: 'empty body', body: '' },
      { name: 'JSON null', body: 'null' },
      { name: 'JSON number', body: '42' },
      { name: 'JSON string', body: '"pm0e83d5aac99c4c7aac37a2d4f341ea26"' },
      { name: 'JSON array of the items', body: JSON.stringify(callbackBody(id, ok).data) },
      { name: 'deeply nested arrays', body: `${'['.repeat(200_000)}${']'.repeat(200_000)}` },
      { name: 'deeply nested objects', body: `${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}` },
      { name: 'deeply nested targetName (object)', body: validRaw(`${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}`) },
      { name: 'huge targetName', body: valid('a'.repeat(900_000)) },
      { name: 'huge messageId', body: JSON.stringify({ ...callbackBody(id, ok), messageId: `pm${'a'.repeat(900_000)}` }) },
      { name: 'body over the size limit', body: valid(`${'a'.repeat(1_200_000)}.com`) },
      { name: '10k items', body: JSON.stringify(callbackBody(id, domainsFor('tenk', 10_000))) },
      { name: 'messageId with a path', body: JSON.stringify({ ...callbackBody(id, ok), messageId: '../../etc/passwd' }) },
      { name: 'messageId with SQL', body: JSON.stringify({ ...callbackBody(id, ok), messageId: "pm'; DROP TABLE batch; --" }) },
      { name: 'messageId as a number', body: JSON.stringify({ ...callbackBody(id, ok), messageId: 12345 }) },
      { name: 'messageId as an object', body: JSON.stringify({ ...callbackBody(id, ok), messageId: { $ne: null } }) },
      { name: 'messageId only in __proto__', body: `{"__proto__":{"messageId":"${id}"},"data":${JSON.stringify(callbackBody(id, ok).data)}}` },
      { name: 'data as an object', body: JSON.stringify({ messageId: id, data: { targetName: ok[0] } }) },
      { name: 'data empty', body: JSON.stringify({ messageId: id, data: [] }) },
      { name: 'an item that is a string', body: JSON.stringify({ messageId: id, data: [...callbackBody(id, ok).data, 'x.example.com'] }) },
      { name: 'an item that is null', body: JSON.stringify({ messageId: id, data: [...callbackBody(id, ok).data, null] }) },
      { name: 'reqType missing', body: JSON.stringify({ messageId: id, data: [{ targetName: ok[0] }] }) },
      { name: 'reqType a number', body: JSON.stringify({ messageId: id, data: [{ targetName: ok[0], reqType: 7 }] }) },
      { name: 'reqType huge', body: JSON.stringify({ messageId: id, data: [{ targetName: ok[0], reqType: 'X'.repeat(100_000) }] }) },
      { name: 'NUL in the targetName', body: valid('exa\u0000mple.com') },
      { name: 'lone surrogate in the targetName', body: valid('\ud800.example.com') },
      { name: 'wrong callback token', body: good, headers: { 'x-callback-token': 'nope' } },
      { name: 'no callback token', body: good, headers: { 'x-callback-token': '' } },
      { name: 'text/plain', body: good, headers: { 'content-type': 'text/plain' } },
      { name: 'gzip that is not gzip', body: good, headers: { 'content-encoding': 'gzip' } },
      { name: 'unknown content-encoding', body: good, headers: { 'content-encoding': 'x-zip' } },
      { name: 'unknown charset', body: good, headers: { 'content-type': 'application/json; charset=x-klingon' } },
    ];
    for (const host of [
      'bücher.example.com', '例え.テスト', 'www.exаmple.com' /* Cyrillic а */, 'exa\u200bmple.com', 'example。com',
      'ｅｘａｍｐｌｅ.com', 'مثال.إختبار', '💩.la', 'e\u0301xample.com', 'example.com\u202e', 'xn--bcher-kva.例え',
      ' .', '..', '-a.com', 'a-.com', `${'a'.repeat(64)}.com`, `${'a.'.repeat(127)}com`, '127.0.0.1', '*.*.com', 'a.com/path', 'a.com:80',
    ]) fixed.push({ name: `unicode or invalid hostname ${JSON.stringify(host)}`, body: valid(host) });

    const random: Case[] = [];
    for (let i = 0; i < n; i++) {
      const kind = int(4);
      if (kind === 0) random.push({ name: `random bytes #${i}`, body: bytes(1 + int(4096)) });
      else if (kind === 1) random.push({ name: `truncated JSON #${i}`, body: good.slice(0, 1 + int(good.length - 2)) });
      else if (kind === 2) {
        // A valid body with random bytes spliced in somewhere, led by a control character that JSON allows
        // neither inside nor outside a string (so the result is never valid JSON by chance).
        const at = int(good.length);
        const control = Buffer.from([pick([0x00, 0x01, 0x02, 0x07, 0x08, 0x0b, 0x0c, 0x0e, 0x1b, 0x1f])]);
        random.push({ name: `corrupted JSON #${i}`, body: Buffer.concat([Buffer.from(good.slice(0, at)), control, bytes(int(8)), Buffer.from(good.slice(at))]) });
      } else {
        // At least one character outside ASCII, so the name is never a valid DNS name by chance.
        const junk = String.fromCodePoint(0x80 + int(0x700), ...Array.from({ length: int(30) }, () => pick([0x41 + int(26), 0x80 + int(0x700), 0x4e00 + int(0x5000), 0x1f300 + int(0x300)])));
        random.push({ name: `random unicode hostname #${i}`, body: valid(`${junk}.${junk}`) });
      }
    }
    return [...fixed, ...random];
  }

  it('(12) when fuzzed bad callbacks arrive, then each gets a 4xx in the vendor’s shape, nothing is stored and the process stays up', async () => {
    const seed = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
    const r = rig = await FaultRig.create();
    const svc = await r.spawn('api', { ROLE: 'api' });
    const before = await rowCounts(r);

    const all = cases(prng(seed), 60);
    expect(await notRefused(svc.url, all), `callbacks not refused with a 4xx in the vendor's shape (FUZZ_SEED=${seed})`).to.deep.equal([]);

    // Not HTTP at all: the server answers 400 and closes; the process does not notice.
    const raw = await new Promise<string>((resolve) => {
      const socket = net.connect(svc.port, '127.0.0.1', () => socket.end(Buffer.concat([Buffer.from('\x00\xff GARBAGE\r\n\r\n'), Buffer.from(JSON.stringify(prng(seed)()))])));
      let got = '';
      socket.on('data', (d) => { got += d.toString('latin1'); });
      socket.on('close', () => resolve(got));
      socket.on('error', () => resolve(got));
    });
    expect(raw, 'reply to bytes that are not HTTP').to.match(/^HTTP\/1\.1 400/);

    expect(await rowCounts(r), `rows after ${all.length} bad callbacks (FUZZ_SEED=${seed})`).to.deep.equal(before);
    expect(svc.proc.exitCode, 'the process is still running').to.equal(null);
    expect((await readiness(svc.url)).status).to.equal(200);
    // …and still takes a good callback.
    const good: Batch = await r.seedBatch(3);
    await r.post(svc.url, good);
    expect(await r.counts(good.id)).to.deep.equal({ pending: 3 });
  });

  // A hostile nesting depth must be a 400 (the vendor would retry a 500 for ever), not a stack overflow.
  it('(12b) when a callback nests arrays 100k deep, then it gets a 4xx and nothing is stored', async () => {
    const r = rig = await FaultRig.create();
    const svc = await r.spawn('api', { ROLE: 'api' });
    const before = await rowCounts(r);
    const id = messageId();
    const ok = domainsFor(id.slice(2, 12), 3);
    const deep = `${'['.repeat(100_000)}"x.example.com"${']'.repeat(100_000)}`;
    const wrong = await notRefused(svc.url, [
      { name: 'deeply nested targetName (array)', body: withRawItem(id, ok, deep) },
      { name: 'deeply nested extra field in an item', body: withRawItem(id, ok, '"x.example.com"', `,"extra":${deep}`) },
    ]);
    expect(wrong, 'callbacks not refused with a 4xx').to.deep.equal([]);
    expect(await rowCounts(r)).to.deep.equal(before);
  });
});
