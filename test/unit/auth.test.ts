/**
 * The pure parts of auth: where a sign-in may send the browser next, which peers are the trusted proxy,
 * the sign-in throttle's window, cookie parsing, password hashes, and how CONSOLE_USERS and the SSO keys
 * are checked at start-up (never echoing a hash).
 */
import { expect } from 'chai';
import { loadConfig } from '../../src/config.js';
import { LoginThrottle, cookieValues, createPeerTrust, safeNextPath, sameSecret } from '../../src/http/auth.js';
import { SCRYPT_N, hashPassword, parsePasswordHash, verifyPassword } from '../../src/http/session.js';
import { ConfigError } from '../../src/lib/errors.js';

const base = { CALLBACK_TOKEN: 'cb-token-0123456789' };

describe('auth (unit)', function () {
  describe('safeNextPath', function () {
    const kept: [string, string][] = [
      ['/console', '/console'],
      ['/console/batches/pm1?x=1', '/console/batches/pm1?x=1'],
      ['/console/a/../b', '/console/b'],
      ['/console/alarms#top', '/console/alarms'],
    ];
    for (const [given, expected] of kept) {
      it(`when next is ${JSON.stringify(given)}, then it is kept as ${JSON.stringify(expected)}`, function () {
        expect(safeNextPath(given)).to.equal(expected);
      });
    }
    const refused: [string, unknown][] = [
      ['a protocol-relative URL', '//evil.example/console'],
      ['a backslash that browsers read as a slash', '/\\evil.example/console'],
      ['an absolute URL', 'https://evil.example/console'],
      ['a javascript: URL', 'javascript:alert(1)'],
      ['a path outside the console', '/api/alarms'],
      ['a path that only starts like the console', '/consolex'],
      ['a path that climbs out of the console', '/console/../api/alarms'],
      ['an encoded climb out of the console', '/console/%2e%2e/api'],
      ['a tab (browsers drop it: "/\\t/evil" is "//evil")', '/\t/evil.example'],
      ['a newline', '/console\n/x'],
      ['the login page itself', '/console/login?next=//evil'],
      ['not a string (a repeated parameter)', ['/console', '//evil']],
      ['empty', ''],
      ['far too long', `/console/${'a'.repeat(3000)}`],
    ];
    for (const [what, given] of refused) {
      it(`when next is ${what}, then it is refused`, function () {
        expect(safeNextPath(given)).to.equal(null);
      });
    }
  });

  describe('createPeerTrust (TRUST_PROXY for the SSO header)', function () {
    it('when TRUST_PROXY is empty, then no address is trusted, loopback included', function () {
      const trusted = createPeerTrust([]);
      expect(trusted('127.0.0.1')).to.equal(false);
      expect(trusted('::1')).to.equal(false);
    });

    it('when TRUST_PROXY is loopback, then 127.0.0.0/8, ::1 and IPv4-mapped loopback are trusted and other addresses are not', function () {
      const trusted = createPeerTrust(loadConfig({}, { ...base, TRUST_PROXY: 'loopback' }).trustProxy);
      for (const a of ['127.0.0.1', '127.0.0.2', '::1', '::ffff:127.0.0.1']) expect(trusted(a), a).to.equal(true);
      for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '192.168.1.1', 'fe80::1', '', undefined, 'not-an-ip']) expect(trusted(a), String(a)).to.equal(false);
    });

    it('when TRUST_PROXY lists a CIDR, an address and named ranges, then exactly those match', function () {
      const trusted = createPeerTrust(loadConfig({}, { ...base, TRUST_PROXY: '10.1.0.0/16, 192.0.2.7, uniquelocal' }).trustProxy);
      expect(trusted('10.1.200.3')).to.equal(true);
      expect(trusted('192.0.2.7')).to.equal(true);
      expect(trusted('192.0.2.8')).to.equal(false);
      expect(trusted('172.20.0.1'), 'uniquelocal').to.equal(true);
      expect(trusted('fd00::5'), 'uniquelocal v6').to.equal(true);
      expect(trusted('127.0.0.1'), 'loopback was not listed').to.equal(false);
    });
  });

  describe('LoginThrottle', function () {
    it('when a key fails maxFailures times, then it is blocked until its window ends, and other keys are not', function () {
      let now = 1_000_000;
      const t = new LoginThrottle({ maxFailures: 3, windowMs: 60_000, now: () => now });
      for (let i = 0; i < 2; i++) t.fail('alice|1.2.3.4');
      expect(t.blockedFor('alice|1.2.3.4'), 'two failures of three').to.equal(0);
      t.fail('alice|1.2.3.4');
      expect(t.blockedFor('alice|1.2.3.4')).to.equal(60_000);
      expect(t.blockedFor('bob|1.2.3.4')).to.equal(0);
      now += 59_999;
      expect(t.blockedFor('alice|1.2.3.4')).to.equal(1);
      now += 1;
      expect(t.blockedFor('alice|1.2.3.4'), 'the window has ended').to.equal(0);
      t.fail('alice|1.2.3.4');
      expect(t.blockedFor('alice|1.2.3.4'), 'a new window starts at one failure').to.equal(0);
    });

    it('when a factor is given, then that many times the failures are allowed (the per-address limit)', function () {
      const t = new LoginThrottle({ maxFailures: 2, windowMs: 1000, now: () => 0 });
      for (let i = 0; i < 7; i++) t.fail('addr');
      expect(t.blockedFor('addr', 4)).to.equal(0);
      t.fail('addr');
      expect(t.blockedFor('addr', 4)).to.equal(1000);
    });

    it('when a key is reset after a good sign-in, then its count starts again', function () {
      const t = new LoginThrottle({ maxFailures: 1, windowMs: 1000, now: () => 0 });
      t.fail('k');
      expect(t.blockedFor('k')).to.equal(1000);
      t.reset('k');
      expect(t.blockedFor('k')).to.equal(0);
    });

    it('when more keys fail than maxKeys, then memory stays bounded and the newest keys are kept', function () {
      const t = new LoginThrottle({ maxFailures: 1, windowMs: 1000, now: () => 0, maxKeys: 100 });
      for (let i = 0; i < 1000; i++) t.fail(`k${i}`);
      expect(t.blockedFor('k999')).to.equal(1000);
      expect(t.blockedFor('k0'), 'the oldest was forgotten').to.equal(0);
    });
  });

  describe('cookieValues and sameSecret', function () {
    it('when a Cookie header holds the session cookie among others, twice, or quoted, then every value of that name is returned', function () {
      expect(cookieValues('a=1; pcp_session=abc; b=2', 'pcp_session')).to.deep.equal(['abc']);
      expect(cookieValues('pcp_session=x;pcp_session="y"', 'pcp_session')).to.deep.equal(['x', 'y']);
      expect(cookieValues('xpcp_session=1; pcp_sessionx=2', 'pcp_session')).to.deep.equal([]);
      expect(cookieValues(undefined, 'pcp_session')).to.deep.equal([]);
    });

    it('when secrets are compared, then only equal non-empty ones match', function () {
      expect(sameSecret('abc', 'abc')).to.equal(true);
      expect(sameSecret('abc', 'abd')).to.equal(false);
      expect(sameSecret('', '')).to.equal(false);
      expect(sameSecret(undefined, 'abc')).to.equal(false);
      expect(sameSecret('abc', undefined)).to.equal(false);
    });
  });

  describe('password hashes', function () {
    it('when a password is hashed, then the hash has the scrypt$N$salt$key shape, verifies that password and no other, and differs each time (salted)', async function () {
      const hash = await hashPassword('correct horse battery', SCRYPT_N.min);
      expect(hash).to.match(/^scrypt\$16384\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$/);
      const parsed = parsePasswordHash(hash)!;
      expect(await verifyPassword('correct horse battery', parsed)).to.equal(true);
      expect(await verifyPassword('correct horse batterY', parsed)).to.equal(false);
      expect(await verifyPassword('', parsed)).to.equal(false);
      expect(await hashPassword('correct horse battery', SCRYPT_N.min)).to.not.equal(hash);
    });

    it('when a hash is malformed, too weak or mangled by a shell, then it is refused', async function () {
      const good = await hashPassword('x'.repeat(12), SCRYPT_N.min);
      const [, , salt, key] = good.split('$');
      for (const bad of [
        '', 'bcrypt$2b$10$abc', `scrypt$1024$${salt}$${key}`, `scrypt$20000$${salt}$${key}`, `scrypt$${2 ** 20}$${salt}$${key}`,
        `scrypt$$${salt}$${key}`, `scrypt$16384$${salt}`, `scrypt$16384$${salt}$${key}$x`, `scrypt$16384$AAAA$${key}`,
        `scrypt$16384$${salt}$AAAA`, `scrypt$16384$${salt}$${key}=`, `scrypt$16384$${salt}$${key!.replace(/=*$/, '')}`,
      ]) {
        expect(parsePasswordHash(bad), bad).to.equal(null);
      }
      expect(parsePasswordHash(good)).to.not.equal(null);
    });
  });

  describe('config: CONSOLE_USERS and single sign-on', function () {
    let hash: string;
    before(async () => { hash = await hashPassword('y'.repeat(12), SCRYPT_N.min); });

    function configError(env: Record<string, string>): ConfigError {
      try {
        loadConfig({}, { ...base, ...env });
      } catch (err) {
        expect(err).to.be.instanceOf(ConfigError);
        return err as ConfigError;
      }
      return expect.fail('expected a ConfigError');
    }

    it('when nothing is set, then there are no console users, no SSO, a 12 h session with a 1 h idle timeout and 5 failures per 15 min', function () {
      const c = loadConfig({}, base);
      expect(c.consoleUsers).to.deep.equal([]);
      expect(c.ssoUserHeader).to.equal('');
      expect(c.ssoOperators).to.deep.equal([]);
      expect(c.consoleSessionTtlMs).to.equal(12 * 3600_000);
      expect(c.consoleSessionIdleMs).to.equal(3600_000);
      expect(c.consoleLoginMaxFailures).to.equal(5);
      expect(c.consoleLoginWindowMs).to.equal(15 * 60_000);
    });

    it('when CONSOLE_USERS lists two entries and SSO is set, then they load as name, role and hash, the header lower-cased', function () {
      const c = loadConfig({}, { ...base, CONSOLE_USERS: ` alice:operator:${hash} ,bob@corp:viewer:${hash}`, SSO_USER_HEADER: 'X-Forwarded-User', SSO_OPERATORS: 'carol, dave' });
      expect(c.consoleUsers).to.deep.equal([{ name: 'alice', role: 'operator', hash }, { name: 'bob@corp', role: 'viewer', hash }]);
      expect(c.ssoUserHeader).to.equal('x-forwarded-user');
      expect(c.ssoOperators).to.deep.equal(['carol', 'dave']);
    });

    const badUsers: [string, () => string, RegExp][] = [
      ['a role other than viewer or operator', () => `alice:admin:${hash}`, /entry 1 \("alice"\) has a role other than viewer or operator/],
      ['a hash a shell mangled', () => `alice:operator:${hash.replace('$16384', '')}`, /entry 1 \("alice"\) has no valid hash/],
      ['a repeated name', () => `alice:viewer:${hash},alice:operator:${hash}`, /entry 2 \("alice"\) repeats a name/],
      ['a bearer name', () => `admin-token:operator:${hash}`, /entry 1 \("admin-token"\) has no valid name/],
      ['no colons', () => hash, /entry 1 has no valid name/],
    ];
    for (const [what, value, reason] of badUsers) {
      it(`when CONSOLE_USERS has ${what}, then loading throws a ConfigError naming CONSOLE_USERS and the entry, never echoing the hash`, function () {
        const err = configError({ CONSOLE_USERS: value() });
        expect(err.message.startsWith('CONSOLE_USERS '), err.message).to.equal(true);
        expect(err.message).to.match(reason);
        const [, , salt, key] = hash.split('$');
        expect(err.message).to.not.include(salt);
        expect(err.message).to.not.include(key);
      });
    }

    for (const header of ['Authorization', 'cookie', 'X-Forwarded-For', 'Host', 'bad header', 'Content-Type']) {
      it(`when SSO_USER_HEADER is ${JSON.stringify(header)}, then loading throws a ConfigError naming SSO_USER_HEADER`, function () {
        expect(configError({ SSO_USER_HEADER: header }).message.startsWith('SSO_USER_HEADER '), header).to.equal(true);
      });
    }

    it('when SSO_OPERATORS is set without SSO_USER_HEADER, then loading throws a ConfigError naming both', function () {
      expect(configError({ SSO_OPERATORS: 'carol' }).message).to.match(/SSO_OPERATORS is set but SSO_USER_HEADER is empty/);
    });
  });
});
