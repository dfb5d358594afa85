/**
 * loadConfig: defaults from config/default.json, overridden by the environment, validated once; a bad
 * value is refused with one sentence naming the variable, and never echoes a secret.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { configKeys, loadConfig } from '../../src/config.js';
import { ConfigError } from '../../src/lib/errors.js';

const defaultsFile = JSON.parse(readFileSync(new URL('../../config/default.json', import.meta.url), 'utf8')) as Record<string, unknown>;
// The defaults ship with CALLBACK_AUTH=token and no token, so a minimal valid environment names one.
const base = { CALLBACK_TOKEN: 'cb-token-0123456789' };

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  expect.fail('expected a ConfigError');
}

describe('config', function () {
  it('when only CALLBACK_TOKEN is set, then every default from config/default.json loads with its type', function () {
    const c = loadConfig({}, base);
    expect(c.role).to.equal('all');
    expect(c.port).to.equal(8080);
    expect(c.retryTiersMs).to.deep.equal([5000, 30000, 300000]);
    expect(c.callbackAllowCidrs).to.deep.equal([]);
    expect(c.trustProxy).to.deep.equal([]);
    expect(c.metricsAuth).to.equal('token');
    expect(c.viewerToken).to.equal('');
    expect(c.httpRequestTimeoutMs).to.equal(15000);
    expect(c.httpMaxConnections).to.equal(1000);
    expect(c.callbackAuth).to.equal('token');
    expect(c.callbackBodyLimit).to.equal('1mb');
    expect(c.callbackMaxItems).to.equal(5000);
    expect(c.tokenLockTtlMs).to.equal(10000);
    expect(c.instanceId, 'empty INSTANCE_ID becomes host:pid').to.match(new RegExp(`:${process.pid}$`));
    expect(Object.isFrozen(c)).to.equal(true);
  });

  it('when a value is in the environment and in the overrides, then the override wins over the environment, which wins over the default', function () {
    expect(loadConfig({ ...base, PORT: '9001' }).port).to.equal(9001);
    expect(loadConfig({ ...base, PORT: '9001' }, { PORT: '9002' }).port).to.equal(9002);
    const c = loadConfig({ ...base, RETRY_TIERS_MS: ' 100, 200 ', CALLBACK_ALLOW_CIDRS: '10.0.0.0/8, 192.168.1.1,' });
    expect(c.retryTiersMs).to.deep.equal([100, 200]);
    expect(c.callbackAllowCidrs).to.deep.equal([
      { address: '10.0.0.0', prefix: 8, family: 'ipv4' },
      { address: '192.168.1.1', prefix: 32, family: 'ipv4' },
    ]);
  });

  const bad: [string, string][] = [
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['ROLE', 'both'],
    ['LOG_LEVEL', 'verbose'],
    ['RETRY_TIERS_MS', '5,x'],
    ['RETRY_TIERS_MS', '5,0'],
    ['RETRY_TIERS_MS', ''],
    ['DATABASE_URL', 'nonsense'],
    ['DATABASE_URL', 'mysql://db.internal/app'],
    ['REDIS_URL', 'http://127.0.0.1:6379'],
    ['RABBITMQ_URL', 'nonsense'],
    ['AMQP_PREFIX', 'has space'],
    ['CALLBACK_AUTH', 'basic'],
    ['CALLBACK_BODY_LIMIT', '1gb'],
    ['CALLBACK_MAX_ITEMS', '0'],
    ['SECPLAT_BATCH_SIZE', '1.5'],
    ['DATABASE_POOL_SIZE', '-1'],
    ['METRICS_AUTH', 'open'],
    ['HTTP_REQUEST_TIMEOUT_MS', 'abc'],
    ['HTTP_MAX_CONNECTIONS', '0'],
  ];
  for (const [name, value] of bad) {
    it(`when ${name}=${JSON.stringify(value)}, then loading throws a ConfigError naming ${name}`, function () {
      const err = configError(() => loadConfig({}, { ...base, [name]: value }));
      expect(err.message.startsWith(`${name} `), err.message).to.equal(true);
      expect(err.code).to.equal('CONFIG');
    });
  }

  it('when a value is bad, then the error says what the variable should be', function () {
    const err = configError(() => loadConfig({}, { ...base, RETRY_TIERS_MS: '5,x' }));
    expect(err.message).to.include('comma-separated list of positive milliseconds');
    expect(err.message).to.include('"5,x"');
  });

  it('when another value is bad, then the error does not echo SECPLAT_PASSWORD, CALLBACK_TOKEN, ADMIN_TOKEN or VIEWER_TOKEN', function () {
    const secrets = {
      SECPLAT_PASSWORD: 'pw-9f3a1c', CALLBACK_TOKEN: 'cb-7e21d0-5a6b7c8d9e', ADMIN_TOKEN: 'adm-55b2e8-1a2b3c4d', VIEWER_TOKEN: 'vw-0c4f7a-9e8d7c6b5a',
    };
    for (const [name, value] of [['PORT', 'abc'], ['DATABASE_URL', 'nonsense'], ['TOKEN_LOCK_TTL_MS', '500']] as const) {
      const err = configError(() => loadConfig({}, { ...secrets, [name]: value }));
      for (const secret of Object.values(secrets)) expect(err.message, `${name}: ${err.message}`).to.not.include(secret);
    }
  });

  it('when DATABASE_URL with a password is invalid, then the error shows the URL without the password', function () {
    const err = configError(() => loadConfig({}, { ...base, DATABASE_URL: 'mysql://app:S3cretPw@db.internal:5432/app' }));
    expect(err.message).to.include('DATABASE_URL');
    expect(err.message).to.include('db.internal');
    expect(err.message).to.not.include('S3cretPw');
  });

  it('when the password inside an invalid DATABASE_URL holds an unescaped "@", then no part of it is echoed', function () {
    // The classic reason a connection URL is invalid in the first place.
    const err = configError(() => loadConfig({}, { ...base, DATABASE_URL: 'postgres://app:Sup3r@Secret@db.internal:54x2/app' }));
    expect(err.message).to.include('DATABASE_URL');
    expect(err.message).to.not.include('Sup3r');
    expect(err.message).to.not.include('Secret');
  });

  it('when the password inside an invalid DATABASE_URL holds an unescaped "/" (as base64 passwords do), then it is not echoed', function () {
    const err = configError(() => loadConfig({}, { ...base, DATABASE_URL: 'postgres://app:k9+Zq/Wx7@db.internal:5432/app' }));
    expect(err.message).to.include('DATABASE_URL');
    expect(err.message).to.not.include('k9+Zq');
    expect(err.message).to.not.include('Wx7');
  });

  it('when RABBITMQ_URL with a password is invalid, then the password is not echoed', function () {
    const err = configError(() => loadConfig({}, { ...base, RABBITMQ_URL: 'http://admin:RmqPw77@mq.internal:5672' }));
    expect(err.message).to.include('RABBITMQ_URL');
    expect(err.message).to.not.include('RmqPw77');
  });

  it('when CALLBACK_AUTH=token and CALLBACK_TOKEN is missing or empty, then the API refuses to start', function () {
    for (const env of [{}, { CALLBACK_TOKEN: '' }]) {
      const err = configError(() => loadConfig({}, { ...env, CALLBACK_AUTH: 'token', ROLE: 'api' }));
      expect(err.message).to.include('CALLBACK_TOKEN must be set');
      expect(err.message).to.include('CALLBACK_AUTH=none');
    }
    configError(() => loadConfig({}, { ROLE: 'all' }));
  });

  it('when CALLBACK_AUTH=none, then no CALLBACK_TOKEN is needed', function () {
    const c = loadConfig({}, { CALLBACK_AUTH: 'none' });
    expect(c.callbackAuth).to.equal('none');
    expect(c.callbackToken).to.equal('');
  });

  it('when ROLE=worker, then no CALLBACK_TOKEN is needed (it serves no callback)', function () {
    expect(loadConfig({}, { ROLE: 'worker' }).role).to.equal('worker');
  });

  it('when TOKEN_LOCK_TTL_MS is not longer than SECPLAT_TIMEOUT_MS, then loading is refused naming both', function () {
    for (const ttl of ['3000', '2999']) {
      const err = configError(() => loadConfig({}, { ...base, SECPLAT_TIMEOUT_MS: '3000', TOKEN_LOCK_TTL_MS: ttl }));
      expect(err.message).to.match(/^TOKEN_LOCK_TTL_MS/);
      expect(err.message).to.include('SECPLAT_TIMEOUT_MS');
    }
    expect(loadConfig({}, { ...base, SECPLAT_TIMEOUT_MS: '3000', TOKEN_LOCK_TTL_MS: '3001' }).tokenLockTtlMs).to.equal(3001);
  });

  describe('addresses: CALLBACK_ALLOW_CIDRS and TRUST_PROXY', function () {
    const badCidrs: [string, string][] = [
      ['an empty prefix (read as /0 before)', '10.0.0.1/'],
      ['two prefixes', '10.0.0.0/8/32'],
      ['an IPv4 prefix over 32', '10.0.0.0/33'],
      ['an IPv6 prefix over 128', '2001:db8::/129'],
      ['a negative prefix', '10.0.0.0/-1'],
      ['a hexadecimal prefix', '10.0.0.0/0x8'],
      ['a fractional prefix', '10.0.0.0/8.5'],
      ['a space inside', '10.0.0.0/ 8'],
      ['non-ASCII digits', '10.0.0.0/\uff18'],
      ['a host name', 'lb.example.com'],
      ['an octet over 255', '10.0.0.256/32'],
      ['an IPv6 zone id', 'fe80::1%eth0/64'],
      ['a named range (only TRUST_PROXY has those)', 'loopback'],
    ];
    for (const [what, cidr] of badCidrs) {
      it(`when CALLBACK_ALLOW_CIDRS holds ${what} (${JSON.stringify(cidr)}), then loading throws a ConfigError naming CALLBACK_ALLOW_CIDRS and the entry`, function () {
        const err = configError(() => loadConfig({}, { ...base, CALLBACK_ALLOW_CIDRS: `127.0.0.0/8, ${cidr}` }));
        expect(err.message.startsWith('CALLBACK_ALLOW_CIDRS '), err.message).to.equal(true);
        expect(err.message).to.include(JSON.stringify(cidr));
      });
    }

    it('when CALLBACK_ALLOW_CIDRS holds IPv4 and IPv6 CIDRs and plain addresses, then they load parsed, a plain address as one host', function () {
      const c = loadConfig({}, { ...base, CALLBACK_ALLOW_CIDRS: '0.0.0.0/0,10.1.2.3, ::1 ,2001:db8::/32,::ffff:10.0.0.0/104' });
      expect(c.callbackAllowCidrs).to.deep.equal([
        { address: '0.0.0.0', prefix: 0, family: 'ipv4' },
        { address: '10.1.2.3', prefix: 32, family: 'ipv4' },
        { address: '::1', prefix: 128, family: 'ipv6' },
        { address: '2001:db8::', prefix: 32, family: 'ipv6' },
        { address: '::ffff:10.0.0.0', prefix: 104, family: 'ipv6' },
      ]);
    });

    const badProxies: [string, string][] = [
      ['"true" (trust everyone, which would let any caller forge its address)', 'true'],
      ['a hop count ("1" was read as the address 0.0.0.1)', '1'],
      ['a misspelt named range', 'loopbak'],
      ['an empty prefix', '10.0.0.1/'],
      ['a prefix over 32', '10.0.0.0/33'],
      ['a netmask instead of a prefix', '10.0.0.0/255.0.0.0'],
    ];
    for (const [what, value] of badProxies) {
      it(`when TRUST_PROXY is ${what}, then loading throws a ConfigError naming TRUST_PROXY`, function () {
        const err = configError(() => loadConfig({}, { ...base, TRUST_PROXY: value }));
        expect(err.message.startsWith('TRUST_PROXY '), err.message).to.equal(true);
        expect(err.message).to.include('loopback');
      });
    }

    it('when TRUST_PROXY lists named ranges, addresses and CIDRs, then it loads as a list express accepts; empty trusts no proxy', function () {
      const c = loadConfig({}, { ...base, TRUST_PROXY: 'loopback, 10.0.0.0/8,::1, Uniquelocal,linklocal' });
      expect(c.trustProxy).to.deep.equal(['loopback', '10.0.0.0/8', '::1/128', 'uniquelocal', 'linklocal']);
      expect(loadConfig({}, { ...base, TRUST_PROXY: ' ' }).trustProxy).to.deep.equal([]);
    });
  });

  describe('secrets', function () {
    const long = (c: string) => c.repeat(16);

    for (const name of ['ADMIN_TOKEN', 'VIEWER_TOKEN']) {
      it(`when ${name} is shorter than 16 characters, then loading is refused naming it, without echoing it`, function () {
        const err = configError(() => loadConfig({}, { ...base, [name]: 'short-tok-15chr' }));
        expect(err.message.startsWith(`${name} `), err.message).to.equal(true);
        expect(err.message).to.include('16 characters');
        expect(err.message).to.not.include('short-tok-15chr');
        expect(loadConfig({}, { ...base, [name]: 'exactly-16-chars' })).to.be.an('object');
      });
    }

    it('when VIEWER_TOKEN equals ADMIN_TOKEN, then loading is refused naming both, without echoing them', function () {
      const token = 'same-token-for-both-roles';
      const err = configError(() => loadConfig({}, { ...base, ADMIN_TOKEN: token, VIEWER_TOKEN: token }));
      expect(err.message).to.match(/^VIEWER_TOKEN /);
      expect(err.message).to.include('ADMIN_TOKEN');
      expect(err.message).to.not.include(token);
      const c = loadConfig({}, { ...base, ADMIN_TOKEN: long('a'), VIEWER_TOKEN: long('v') });
      expect([c.adminToken, c.viewerToken]).to.deep.equal([long('a'), long('v')]);
    });

    it('when CALLBACK_AUTH=token and CALLBACK_TOKEN is shorter than 16 characters, then the API refuses to start without echoing it', function () {
      for (const role of ['all', 'api']) {
        const err = configError(() => loadConfig({}, { ROLE: role, CALLBACK_TOKEN: 'cb-token-15char' }));
        expect(err.message).to.match(/^CALLBACK_TOKEN /);
        expect(err.message).to.include('16 characters');
        expect(err.message).to.not.include('cb-token-15char');
      }
      expect(loadConfig({}, { CALLBACK_TOKEN: 'cb-token-16chars' }).callbackToken).to.equal('cb-token-16chars');
      expect(loadConfig({}, { CALLBACK_AUTH: 'none', CALLBACK_TOKEN: 'short' }).callbackAuth, 'unused with CALLBACK_AUTH=none').to.equal('none');
    });

    it('when SECPLAT_PASSWORD is empty and SECPLAT_BASE_URL is not on this machine, then loading is refused naming SECPLAT_PASSWORD', function () {
      for (const remote of ['https://secplat.example.com', 'http://10.0.0.5:9090', 'http://127.0.0.1.example.com']) {
        const err = configError(() => loadConfig({}, { ...base, SECPLAT_BASE_URL: remote, SECPLAT_PASSWORD: '' }));
        expect(err.message).to.match(/^SECPLAT_PASSWORD /);
        expect(err.message).to.include('SECPLAT_BASE_URL');
      }
      expect(loadConfig({}, { ...base, SECPLAT_BASE_URL: 'https://secplat.example.com', SECPLAT_PASSWORD: 'pw' }).secplatPassword).to.equal('pw');
    });

    it('when SECPLAT_PASSWORD is empty and SECPLAT_BASE_URL is the local simulator (127.0.0.1, ::1, localhost), then it loads', function () {
      for (const local of ['http://127.0.0.1:9090', 'http://[::1]:9090', 'http://localhost:9090/', 'http://LOCALHOST']) {
        expect(loadConfig({}, { ...base, SECPLAT_BASE_URL: local, SECPLAT_PASSWORD: '' }).secplatPassword, local).to.equal('');
      }
    });

    it('when ROLE=api, then an empty SECPLAT_PASSWORD is accepted (an API-only process never calls the platform)', function () {
      expect(loadConfig({}, { ...base, ROLE: 'api', SECPLAT_BASE_URL: 'https://secplat.example.com', SECPLAT_PASSWORD: '' }).role).to.equal('api');
    });
  });

  it('when configKeys and config/default.json are compared, then every key has a default and every default a key', function () {
    const envNames = Object.values(configKeys).map(([envName]) => envName).sort();
    expect(new Set(envNames).size, 'no variable serves two keys').to.equal(envNames.length);
    expect(Object.keys(defaultsFile).sort()).to.deep.equal(envNames);
  });

  it('when every key is documented, then each has a non-empty doc line', function () {
    for (const [key, [envName, doc]] of Object.entries(configKeys)) {
      expect(doc.length, `${key} (${envName})`).to.be.greaterThan(10);
    }
  });
});
