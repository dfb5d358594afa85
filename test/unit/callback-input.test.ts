/**
 * The vendor's callback body, validated without I/O: what is accepted, how hostnames are normalised,
 * and which reason the vendor is told when something is refused.
 */
import { expect } from 'chai';
import { ValidationError } from '../../src/lib/errors.js';
import { CallbackRejectedError, normalizeHostname, parseCallback } from '../../src/pipeline/callback-input.js';
import { finishedInPipeline } from '../../src/store/ledger.js';

const ID = 'pm0e83d5aac99c4c7aac37a2d4f341ea26';
const item = (targetName: unknown, reqType: unknown = 'SELF_DOMAIN_DELETE') => ({ percent: 1.0, process: false, reqType, targetName });

/** Runs fn, expects a CallbackRejectedError and returns it. */
function rejection(fn: () => unknown): CallbackRejectedError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(CallbackRejectedError);
    expect(err).to.be.instanceOf(ValidationError);
    return err as CallbackRejectedError;
  }
  expect.fail('expected the callback to be rejected');
}

describe('callback input', function () {
  describe('normalizeHostname', function () {
    it('when a hostname has upper case and a trailing dot, then it is lower-cased without the dot', function () {
      expect(normalizeHostname('WWW.Example.COM.')).to.equal('www.example.com');
      expect(normalizeHostname('tjj.example.gov.cn')).to.equal('tjj.example.gov.cn');
    });

    it('when a hostname is a wildcard "*.example.com", then it is accepted as is', function () {
      expect(normalizeHostname('*.Example.com')).to.equal('*.example.com');
    });

    it('when a wildcard is not the first label, then it is rejected', function () {
      expect(normalizeHostname('www.*.example.com')).to.equal(null);
    });

    it('when a label has exactly 63 characters and the name exactly 253, then it is accepted', function () {
      const l63 = 'a'.repeat(63);
      expect(normalizeHostname(`${l63}.com`)).to.equal(`${l63}.com`);
      const name253 = `${l63}.${l63}.${l63}.${'b'.repeat(61)}`;
      expect(name253).to.have.length(253);
      expect(normalizeHostname(name253)).to.equal(name253);
      expect(normalizeHostname(`${name253}.`), 'trailing dot does not count').to.equal(name253);
    });

    const invalid: [string, unknown][] = [
      ['empty', ''],
      ['only a dot', '.'],
      ['spaces inside', 'www.exa mple.com'],
      ['a leading hyphen in a label', '-a.com'],
      ['a trailing hyphen in a label', 'a-.com'],
      ['a label over 63 characters', `${'a'.repeat(64)}.com`],
      ['a name over 253 characters', `${'a'.repeat(63)}.${'a'.repeat(63)}.${'a'.repeat(63)}.${'b'.repeat(62)}`],
      ['a single label', 'localhost'],
      ['an IPv4 address', '192.168.0.1'],
      ['an IPv6 address', '::1'],
      ['unicode', 'bücher.de'],
      ['an empty label', 'a..b'],
      ['an underscore', 'a_b.example.com'],
      ['a URL', 'https://www.example.com/'],
      ['a number', 42],
      ['null', null],
    ];
    for (const [what, raw] of invalid) {
      it(`when a hostname is ${what}, then it is rejected`, function () {
        expect(normalizeHostname(raw)).to.equal(null);
      });
    }
  });

  describe('parseCallback', function () {
    it('when the vendor sends a valid payload, then its messageId and domains are returned as supported items', function () {
      const body = { data: [item('tjj.example.gov.cn'), item('www.example.com')], messageId: ID };
      expect(parseCallback(body, 100)).to.deep.equal({
        messageId: ID,
        items: [
          { domain: 'tjj.example.gov.cn', reqType: 'SELF_DOMAIN_DELETE', supported: true, percent: 1, process: false },
          { domain: 'www.example.com', reqType: 'SELF_DOMAIN_DELETE', supported: true, percent: 1, process: false },
        ],
      });
    });

    it('when one callback repeats a domain (also in another case or with a trailing dot), then it counts once', function () {
      const body = { data: [item('www.example.com'), item('WWW.EXAMPLE.COM.'), item('a.example.com'), item('www.example.com')], messageId: ID };
      const { items } = parseCallback(body, 100);
      expect(items.map((i) => i.domain)).to.deep.equal(['www.example.com', 'a.example.com']);
    });

    it('when an item is a wildcard domain, then it is accepted', function () {
      const { items } = parseCallback({ data: [item('*.example.com')], messageId: ID }, 10);
      expect(items).to.deep.equal([{ domain: '*.example.com', reqType: 'SELF_DOMAIN_DELETE', supported: true, percent: 1, process: false }]);
    });

    it('when an item has an unknown reqType, then it is kept with supported:false (not rejected)', function () {
      const { items } = parseCallback({ data: [item('a.example.com'), item('b.example.com', 'SELF_DOMAIN_ADD')], messageId: ID }, 10);
      expect(items).to.deep.equal([
        { domain: 'a.example.com', reqType: 'SELF_DOMAIN_DELETE', supported: true, percent: 1, process: false },
        { domain: 'b.example.com', reqType: 'SELF_DOMAIN_ADD', supported: false, percent: 1, process: false },
      ]);
    });

    it('when data holds exactly the maximum number of items, then it is accepted', function () {
      const data = Array.from({ length: 5 }, (_, i) => item(`d${i}.example.com`));
      expect(parseCallback({ data, messageId: ID }, 5).items).to.have.length(5);
    });

    const badHosts: [string, string][] = [
      ['empty', ''],
      ['with spaces', 'www.exa mple.com'],
      ['with a leading hyphen', '-a.com'],
      ['with a label over 63 characters', `${'a'.repeat(64)}.com`],
      ['over 253 characters', Array.from({ length: 5 }, () => 'a'.repeat(60)).join('.')],
      ['a single label', 'localhost'],
      ['an IP address', '10.1.2.3'],
      ['unicode', 'bücher.de'],
      ['with an empty label', 'a..b'],
    ];
    for (const [what, host] of badHosts) {
      it(`when item 1's hostname is ${what}, then the callback is rejected with a reason naming data[1]`, function () {
        const err = rejection(() => parseCallback({ data: [item('ok.example.com'), item(host)], messageId: ID }, 10));
        expect(err.status).to.equal(400);
        expect(err.messageId).to.equal(ID);
        expect(err.message).to.match(/^data\[1\]\.targetName .* is not a valid hostname$/);
      });
    }

    it('when an item has no targetName, then the reason names that item', function () {
      const err = rejection(() => parseCallback({ data: [item('a.example.com'), item('b.example.com'), { reqType: 'SELF_DOMAIN_DELETE' }], messageId: ID }, 10));
      expect(err.message).to.include('data[2].targetName');
    });

    const badIds: [string, unknown, string][] = [
      ['missing', undefined, 'messageId is missing'],
      ['null', null, 'messageId is missing'],
      ['an empty string', '', 'messageId is missing'],
      ['a number', 12345, 'messageId must be'],
      ['an object', { id: ID }, 'messageId must be'],
      ['holding a space', 'pm 0e83', 'messageId must be'],
      ['holding a slash', 'pm/../x', 'messageId must be'],
      ['129 characters long', 'a'.repeat(129), 'messageId must be'],
    ];
    for (const [what, id, reason] of badIds) {
      it(`when messageId is ${what}, then the callback is rejected with messageId null`, function () {
        const body: Record<string, unknown> = { data: [item('a.example.com')] };
        if (id !== undefined) body.messageId = id;
        const err = rejection(() => parseCallback(body, 10));
        expect(err.status).to.equal(400);
        expect(err.messageId).to.equal(null);
        expect(err.message).to.include(reason);
      });
    }

    it('when messageId is 128 characters of the allowed alphabet, then it is accepted', function () {
      const id = `pm_-${'Ab9'.repeat(42)}`.slice(0, 128);
      expect(id).to.have.length(128);
      expect(parseCallback({ data: [item('a.example.com')], messageId: id }, 10).messageId).to.equal(id);
    });

    const badBodies: [string, unknown][] = [['null', null], ['an array', [item('a.example.com')]], ['a string', 'hello'], ['a number', 1]];
    for (const [what, body] of badBodies) {
      it(`when the body is ${what}, then it is rejected as not a JSON object`, function () {
        const err = rejection(() => parseCallback(body, 10));
        expect(err.message).to.equal('body must be a JSON object');
        expect(err.messageId).to.equal(null);
      });
    }

    const badData: [string, unknown, RegExp][] = [
      ['missing', undefined, /^data must be an array/],
      ['an object', { 0: item('a.example.com') }, /^data must be an array/],
      ['a string', 'a.example.com', /^data must be an array/],
      ['empty', [], /^data is empty$/],
      ['over the maximum', Array.from({ length: 11 }, (_, i) => item(`d${i}.example.com`)), /^data holds 11 items; at most 10/],
    ];
    for (const [what, data, reason] of badData) {
      it(`when data is ${what}, then the callback is rejected and the reply still carries the messageId`, function () {
        const body: Record<string, unknown> = { messageId: ID };
        if (data !== undefined) body.data = data;
        const err = rejection(() => parseCallback(body, 10));
        expect(err.status).to.equal(400);
        expect(err.messageId).to.equal(ID);
        expect(err.message).to.match(reason);
      });
    }

    const badItems: [string, unknown][] = [['null', null], ['a string', 'a.example.com'], ['an array', ['a.example.com']], ['a number', 7]];
    for (const [what, bad] of badItems) {
      it(`when an item is ${what}, then the reason says that item must be an object`, function () {
        const err = rejection(() => parseCallback({ data: [item('a.example.com'), bad], messageId: ID }, 10));
        expect(err.message).to.equal('data[1] must be an object');
      });
    }

    const badReqTypes: [string, unknown][] = [
      ['missing', undefined], ['empty', ''], ['a number', 3], ['over 64 characters', 'X'.repeat(65)],
      ['lower case', 'self_domain_delete'], ['hyphenated', 'SELF-DOMAIN-DELETE'], ['holding a space', 'SELF DOMAIN'],
      ['starting with a digit', '1SELF_DOMAIN_DELETE'], ['starting with an underscore', '_SELF'], ['non-ASCII', 'SELF_DOMAIN_DELETÉ'],
      ['holding a newline', 'SELF_DOMAIN_DELETE\n'],
    ];
    for (const [what, reqType] of badReqTypes) {
      it(`when reqType is ${what}, then the reason names that item's reqType and its pattern`, function () {
        const bad: Record<string, unknown> = { targetName: 'b.example.com' };
        if (reqType !== undefined) bad.reqType = reqType;
        const err = rejection(() => parseCallback({ data: [item('a.example.com'), bad], messageId: ID }, 10));
        expect(err.message).to.equal('data[1].reqType must be 1 to 64 characters of A-Z, 0-9 or _, starting with a letter');
        expect(err.messageId).to.equal(ID);
      });
    }

    it('when reqType is unknown but well formed (one letter, 64 characters, digits), then it is kept as unsupported, never dropped', function () {
      const types = ['X', `S${'_'.repeat(63)}`, 'SELF_DOMAIN_DELETE_V2'];
      const { items } = parseCallback({ data: types.map((t, i) => item(`d${i}.example.com`, t)), messageId: ID }, 10);
      expect(items.map((i) => [i.reqType, i.supported])).to.deep.equal(types.map((t) => [t, false]));
    });
  });

  describe('the vendor\'s progress fields (percent, process)', function () {
    /** An item with only the given progress fields (the others as in the seed). */
    const progress = (fields: Record<string, unknown>) => ({ reqType: 'SELF_DOMAIN_DELETE', targetName: 'b.example.com', ...fields });
    const parse = (second: Record<string, unknown>) => parseCallback({ data: [item('a.example.com'), second], messageId: ID }, 10).items[1]!;

    it('when percent and process are absent, then they are null and the item counts as finished', function () {
      const parsed = parse({ reqType: 'SELF_DOMAIN_DELETE', targetName: 'b.example.com' });
      expect(parsed).to.include({ percent: null, process: null });
      expect(finishedInPipeline(parsed)).to.equal(true);
    });

    const accepted: [string, Record<string, unknown>, boolean][] = [
      ['percent 1.0 and process false (the seed)', { percent: 1.0, process: false }, true],
      ['percent 1 and process absent', { percent: 1 }, true],
      ['process false and percent absent', { process: false }, true],
      ['process true', { percent: 1, process: true }, false],
      ['percent 0.5', { percent: 0.5, process: false }, false],
      ['percent 0', { percent: 0 }, false],
      ['percent 0.99999', { percent: 0.99999, process: false }, false],
    ];
    for (const [what, fields, finished] of accepted) {
      it(`when an item has ${what}, then the values are kept as sent and it counts as ${finished ? 'finished' : 'unfinished'}`, function () {
        const parsed = parse(progress(fields));
        expect(parsed.percent).to.equal('percent' in fields ? fields.percent : null);
        expect(parsed.process).to.equal('process' in fields ? fields.process : null);
        expect(finishedInPipeline(parsed)).to.equal(finished);
      });
    }

    const badPercents: [string, unknown, string][] = [
      ['the string "1.0"', '1.0', '"1.0"'],
      ['100 (a percentage?)', 100, '100'],
      ['1.01', 1.01, '1.01'],
      ['negative', -0.1, '-0.1'],
      ['null', null, 'null'],
      ['a boolean', true, 'true'],
      ['an object', { value: 1 }, '{"value":1}'],
    ];
    for (const [what, percent, shownAs] of badPercents) {
      it(`when percent is ${what}, then the callback is rejected with a reason naming data[1].percent`, function () {
        const err = rejection(() => parseCallback({ data: [item('a.example.com'), progress({ percent, process: false })], messageId: ID }, 10));
        expect(err.status).to.equal(400);
        expect(err.messageId).to.equal(ID);
        expect(err.message).to.equal(`data[1].percent must be a JSON number from 0 to 1 (1 = finished), not ${shownAs}`);
      });
    }

    it('when percent is 1e400 in the JSON text (Infinity once parsed), then it is rejected as not finite', function () {
      const body = JSON.parse(`{"data":[{"percent":1e400,"process":false,"reqType":"SELF_DOMAIN_DELETE","targetName":"a.example.com"}],"messageId":"${ID}"}`) as unknown;
      const err = rejection(() => parseCallback(body, 10));
      expect(err.message).to.equal('data[0].percent must be a JSON number from 0 to 1 (1 = finished), not Infinity');
    });

    const badProcesses: [string, unknown, string][] = [
      ['the string "false"', 'false', '"false"'],
      ['0', 0, '0'],
      ['1', 1, '1'],
      ['null', null, 'null'],
    ];
    for (const [what, processValue, shownAs] of badProcesses) {
      it(`when process is ${what}, then the callback is rejected with a reason naming data[1].process`, function () {
        const err = rejection(() => parseCallback({ data: [item('a.example.com'), progress({ percent: 1, process: processValue })], messageId: ID }, 10));
        expect(err.status).to.equal(400);
        expect(err.messageId).to.equal(ID);
        expect(err.message).to.equal(`data[1].process must be a JSON boolean (true or false), not ${shownAs}`);
      });
    }

    it('when one callback lists a domain twice, once finished and once unfinished, then it counts once and as unfinished', function () {
      const body = { data: [item('a.example.com'), { ...item('A.example.com.'), percent: 0.4, process: true }, { ...item('a.example.com'), percent: 0.7 }], messageId: ID };
      const { items } = parseCallback(body, 10);
      expect(items).to.have.length(1);
      expect(items[0]).to.include({ domain: 'a.example.com', percent: 0.4, process: true });
      expect(finishedInPipeline(items[0]!)).to.equal(false);
    });
  });

  describe('characters PostgreSQL cannot store', function () {
    const nulCases: [string, (body: Record<string, unknown>) => void, string, string | null][] = [
      ['in an item\'s reqType', (b) => { (b.data as Record<string, unknown>[])[3]!.reqType = 'SELF_DOMAIN_DELETE\u0000'; }, 'data[3].reqType contains a NUL character', ID],
      ['in an item\'s targetName', (b) => { (b.data as Record<string, unknown>[])[0]!.targetName = 'a\u0000.example.com'; }, 'data[0].targetName contains a NUL character', ID],
      ['in messageId', (b) => { b.messageId = `${ID}\u0000`; }, 'messageId contains a NUL character', null],
      ['in an unknown field of an item', (b) => { (b.data as Record<string, unknown>[])[2]!.note = { lines: ['ok', 'x\u0000y'] }; }, 'data[2].note.lines[1] contains a NUL character', ID],
      ['in an unknown top-level field', (b) => { b.extra = '\u0000'; }, 'extra contains a NUL character', ID],
      ['in the name of an unknown field', (b) => { (b.data as Record<string, unknown>[])[1]!['x\u0000y'] = 1; }, 'data[1]["x\\u0000y"] contains a NUL character', ID],
      ['in a field name with a dot', (b) => { b['a.b'] = { 'c\u0000': true }; }, '["a.b"]["c\\u0000"] contains a NUL character', ID],
      ['in a percent given as a string', (b) => { (b.data as Record<string, unknown>[])[1]!.percent = '1.0\u0000'; }, 'data[1].percent contains a NUL character', ID],
    ];
    for (const [where, mutate, reason, echo] of nulCases) {
      it(`when a NUL character is ${where}, then the callback is rejected with a 400 naming that field`, function () {
        const body: Record<string, unknown> = { data: [0, 1, 2, 3].map((i) => item(`d${i}.example.com`)), messageId: ID };
        mutate(body);
        const err = rejection(() => parseCallback(body, 10));
        expect(err.status).to.equal(400);
        expect(err.message).to.equal(reason);
        expect(err.messageId).to.equal(echo);
      });
    }

    it('when a string holds an unpaired surrogate (which jsonb refuses too), then the callback is rejected naming the field; a real emoji passes', function () {
      const body = { data: [{ ...item('a.example.com'), note: 'ok \ud83d\ude00' }, { ...item('b.example.com'), note: 'bad \ud800' }], messageId: ID };
      const err = rejection(() => parseCallback(body, 10));
      expect(err.message).to.equal('data[1].note contains an unpaired UTF-16 surrogate (not valid Unicode)');
      expect(parseCallback({ data: [body.data[0]], messageId: ID }, 10).items).to.have.length(1);
    });

    it('when the body holds 100k strings, then the NUL check walks it without recursion and finds the last one', function () {
      const data = Array.from({ length: 1000 }, (_, i) => ({ ...item(`d${i}.example.com`), tags: Array.from({ length: 100 }, (_, j) => `t${j}`) }));
      (data[999]!.tags)[99] = 'last\u0000';
      const err = rejection(() => parseCallback({ data, messageId: ID }, 1000));
      expect(err.message).to.equal('data[999].tags[99] contains a NUL character');
    });
  });
});
