/**
 * Secrets never reach a log line: redact() on values, and the real winston logger writing JSON lines to a
 * captured stream.
 */
import { expect } from 'chai';
import { redact } from '../../src/lib/logger.js';
import { captureLogger } from '../helpers/env.js';

/** Logs through a captured logger and returns the parsed lines (winston's Stream transport writes synchronously). */
function logged(write: (logger: ReturnType<typeof captureLogger>['logger']) => void): Record<string, unknown>[] {
  const { logger, lines } = captureLogger('debug');
  write(logger);
  return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('logger redaction', function () {
  describe('redact()', function () {
    it('when an object has keys password, token, authorization or secret, then their values are replaced', function () {
      expect(redact({ password: 'p1', token: 't1', authorization: 'Basic abc', secret: 's1', domain: 'a.example.com' })).to.deep.equal({
        password: '[redacted]', token: '[redacted]', authorization: '[redacted]', secret: '[redacted]', domain: 'a.example.com',
      });
    });

    it('when secret keys are nested, differently cased or compound (accessToken, clientSecret, Cookie), then they are replaced too', function () {
      const out = redact({
        headers: { Authorization: 'Bearer abc', Cookie: 'sid=1' },
        list: [{ accessToken: 'x1' }, { clientSecret: 'x2' }],
        deep: { a: { b: { SECPLAT_PASSWORD: 'x3' } } },
      });
      expect(out).to.deep.equal({
        headers: { Authorization: '[redacted]', Cookie: '[redacted]' },
        list: [{ accessToken: '[redacted]' }, { clientSecret: '[redacted]' }],
        deep: { a: { b: { SECPLAT_PASSWORD: '[redacted]' } } },
      });
    });

    it('when a secret key holds an object, then the whole object is replaced', function () {
      expect(redact({ token: { access_token: 'abc', expires_in: 3600 } })).to.deep.equal({ token: '[redacted]' });
    });

    it('when a string holds "Bearer xyz", then the token is masked and the rest kept', function () {
      expect(redact('sent Authorization: Bearer xyz.abc-123_~+/= to the platform'))
        .to.equal('sent Authorization: Bearer [redacted] to the platform');
      expect(redact('bearer lowercase1')).to.equal('bearer [redacted]');
    });

    it('when a string holds a URL with a password, then the password is masked and the host kept', function () {
      const line = redact('connect amqp://guest:guestpw@127.0.0.1:5672 failed') as string;
      expect(line).to.not.include('guestpw');
      expect(line).to.match(/^connect amqp:\/\/\S*127\.0\.0\.1:5672 failed$/);
      const obj = redact({ url: 'postgres://app:pgpw@db:5432/app' }) as { url: string };
      expect(obj.url).to.not.include('pgpw');
      expect(obj.url).to.match(/^postgres:\/\/\S*@db:5432\/app$/);
    });

    it('when a URL password holds an unescaped "@" or "/" (as base64 passwords do), then no part of it is kept', function () {
      for (const [url, parts] of [
        ['postgres://app:Sup3r@Secret@db:5432/app', ['Sup3r', 'Secret']],
        ['amqp://app:Ab+c/Def@mq:5672', ['Ab+c', 'Def']],
      ] as const) {
        const out = redact(`cannot connect to ${url}`) as string;
        for (const p of parts) expect(out, out).to.not.include(p);
      }
    });

    it('when a string holds access_token=, refresh_token= or password=, then their values are masked', function () {
      expect(redact('access_token=abc123&token_type=Bearer')).to.equal('access_token=[redacted]&token_type=Bearer');
      expect(redact('refresh_token=r1 and password=hunter2')).to.equal('refresh_token=[redacted] and password=[redacted]');
    });

    it('when an Error is redacted, then its message is masked too', function () {
      expect(redact(new Error('call with Bearer abc failed'))).to.deep.equal({ name: 'Error', message: 'call with Bearer [redacted] failed' });
    });

    it('when a number sits under "tokenGeneration" (or generation, tokenFetches), then it is kept', function () {
      expect(redact({ tokenGeneration: 7, generation: 8, tokenFetches: 2 })).to.deep.equal({ tokenGeneration: 7, generation: 8, tokenFetches: 2 });
    });

    it('when plain values carry no secret, then they are unchanged', function () {
      const v = { messageId: 'pm01', domain: 'a.example.com', counts: { succeeded: 3 }, ok: true, none: null };
      expect(redact(v)).to.deep.equal(v);
    });

    it('when an object has keys apiKey, api_key, x-api-key, jwt, privateKey, private_key, sessionId, session or set-cookie, then their values are replaced', function () {
      const keys = ['apiKey', 'api_key', 'API_KEY', 'x-api-key', 'X-Api-Key', 'apikey', 'jwt', 'privateKey', 'private_key', 'clientSecret',
        'client_secret', 'sessionId', 'session', 'cookie', 'set-cookie', 'Set-Cookie', 'db.password', 'SECPLAT_PASSWORD', 'refreshToken'];
      const out = redact(Object.fromEntries(keys.map((k) => [k, `v-${k}`]))) as Record<string, unknown>;
      for (const k of keys) expect(out[k], k).to.equal('[redacted]');
    });

    it('when keys only resemble secret words (passed, compass, tokenizer, bypass) or describe a secret (token_type, jwtExpiresIn, tokenRequests), then their values are kept', function () {
      const v = { passed: 3, compass: 'north', tokenizer: 'wordpiece', bypass: false, token_type: 'Bearer', jwtExpiresIn: 3600, tokenRequests: 5, privateKeyPath: '/etc/key.pem' };
      expect(redact(v)).to.deep.equal(v);
    });

    it('when a string holds "Basic <credentials>", then the credentials are masked and prose about basic auth is kept', function () {
      expect(redact('sent Authorization: Basic dXNlcjpwYXNz to the platform')).to.equal('sent Authorization: Basic [redacted] to the platform');
      expect(redact('basic YTpi')).to.equal('basic [redacted]');
      expect(redact('Basic Authentication required; basic auth failed')).to.equal('Basic Authentication required; basic auth failed');
    });

    it('when a JSON-ish string holds "access_token":"…", "refresh_token", "password" or "client_secret", then those values are masked and the others kept', function () {
      expect(redact('token reply {"access_token":"at.1-2","token_type":"Bearer","expires_in":3600,"refresh_token":"rt1"}'))
        .to.equal('token reply {"access_token":"[redacted]","token_type":"Bearer","expires_in":3600,"refresh_token":"[redacted]"}');
      expect(redact('{"password" : "p\\"w", "client_secret":"cs1", "user":"app"}')).to.equal('{"password" : "[redacted]", "client_secret":"[redacted]", "user":"app"}');
      expect(redact('body "{\\"access_token\\":\\"at2\\",\\"expires_in\\":60}"')).to.equal('body "{\\"access_token\\":\\"[redacted]\\",\\"expires_in\\":60}"');
      expect(redact("config { password: 'pw3', apiKey: 'k3', user: 'app' }")).to.equal("config { password: '[redacted]', apiKey: '[redacted]', user: 'app' }");
    });

    it('when a string holds api_key=, x-api-key=, jwt=, token= or a cookie pair inside a URL or header, then those values are masked', function () {
      expect(redact('GET /cb?api_key=k1&page=2&jwt=e.y.j')).to.equal('GET /cb?api_key=[redacted]&page=2&jwt=[redacted]');
      expect(redact('x-api-key=k2; session=s3; theme=dark')).to.equal('x-api-key=[redacted]; session=[redacted]; theme=dark');
      expect(redact('{"url":"https://h/x?token=t4"}')).to.equal('{"url":"https://h/x?token=[redacted]"}');
      expect(redact('password=p,w;d!1\\x user=app')).to.equal('password=[redacted] user=app');
    });

    it('when a string only mentions secret words in prose (token, password, passed=, tokenGeneration=), then it is unchanged', function () {
      for (const line of [
        'token refreshed, generation 3; the password was wrong; token: rejected',
        'passed=12 compass=north tokenGeneration=4 tokenizer=wordpiece',
        'a key merely containing token_count=3 in prose',
      ]) expect(redact(line), line).to.equal(line);
    });

    it('when a secret sits in an unterminated quote or after a very long dotted name, then it is still masked', function () {
      expect(redact('cut {"password":"pw-cut')).to.equal('cut {"password":"[redacted]');
      const long = `${'a.'.repeat(10_000)}password=pw5`;
      expect(redact(long)).to.equal(`${'a.'.repeat(10_000)}password=[redacted]`);
    });
  });

  describe('a captured logger', function () {
    it('when metadata holds secret keys, then the written line carries [redacted] instead', function () {
      const [line] = logged((l) => l.info('token fetched', { password: 'pw-1', token: 'tok-1', authorization: 'Bearer tok-1', secret: 's-1', messageId: 'pm01' }));
      expect(line).to.include({ message: 'token fetched', password: '[redacted]', token: '[redacted]', authorization: '[redacted]', secret: '[redacted]', messageId: 'pm01' });
    });

    it('when the message itself holds a bearer token, a URL password or access_token=, then they are masked', function () {
      const lines = logged((l) => {
        l.warn('retrying with Bearer abc.def');
        l.warn('cannot reach amqp://guest:guestpw@mq:5672');
        l.warn('token reply access_token=tok9&expires_in=3600');
      });
      const messages = lines.map((x) => x.message as string);
      expect(messages[0]).to.equal('retrying with Bearer [redacted]');
      expect(messages[1]).to.not.include('guestpw');
      expect(messages[1]).to.include('@mq:5672');
      expect(messages[2]).to.equal('token reply access_token=[redacted]&expires_in=3600');
    });

    it('when a child logger carries a secret in its bindings, then it is redacted on every line', function () {
      const [line] = logged((l) => l.child({ messageId: 'pm01', token: 'child-tok' }).info('hello'));
      expect(line).to.include({ messageId: 'pm01', token: '[redacted]' });
    });

    it('when an Error is logged (as meta or under err), then its message and stack are masked', function () {
      const lines = logged((l) => {
        l.error('failed', { err: new Error('delete with Bearer e1 failed') });
        l.error('failed', new Error('password=e2'));
      });
      const text = lines.map((x) => JSON.stringify(x)).join('\n');
      expect(text).to.not.include('e1 failed');
      expect(text).to.not.include('password=e2');
      expect(lines[0]!.err).to.deep.equal({ name: 'Error', message: 'delete with Bearer [redacted] failed' });
    });

    it('when a number sits under "tokenGeneration", then the line keeps it', function () {
      const [line] = logged((l) => l.info('token rejected', { tokenGeneration: 12 }));
      expect(line!.tokenGeneration).to.equal(12);
    });

    it('when metadata holds apiKey, jwt or privateKey and the message a Basic value or "access_token":"…", then the line masks them and keeps passed and compass', function () {
      const [line] = logged((l) => l.warn('token reply {"access_token":"tok-7"} after Authorization: Basic dXNlcjpwYXNz', {
        apiKey: 'k-7', jwt: 'j-7', privateKey: 'pk-7', passed: 2, compass: 'north',
      }));
      expect(JSON.stringify(line)).to.not.match(/tok-7|dXNlcjpwYXNz|k-7|j-7|pk-7/);
      expect(line).to.include({
        message: 'token reply {"access_token":"[redacted]"} after Authorization: Basic [redacted]',
        apiKey: '[redacted]', jwt: '[redacted]', privateKey: '[redacted]', passed: 2, compass: 'north',
      });
    });

    it('when a line below the level is logged, then nothing is written', function () {
      const { logger, lines } = captureLogger('warn');
      logger.info('quiet', { password: 'x' });
      logger.warn('loud');
      expect(lines).to.have.length(1);
    });
  });
});
