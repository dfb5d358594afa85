/**
 * Pure parsing of what crosses a wire: the security platform's delete reply and our own job bodies.
 */
import { expect } from 'chai';
import { SecplatRetryableError, UnrecoverableJobError } from '../../src/lib/errors.js';
import { parseJob } from '../../src/pipeline/process-batch.js';
import { parseDeleteReply } from '../../src/secplat/client.js';

describe('security-platform delete reply', () => {
  it('when chk_fail_dict_l is empty, then every requested id succeeded', () => {
    expect(parseDeleteReply({ status: 0, code: 0, chk_fail_dict_l: [], success_num: 2 }, ['a', 'b']))
      .to.deep.equal({ succeeded: ['a', 'b'], failed: [] });
  });

  it('when some entries are listed in chk_fail_dict_l, then they fail with their reason and the rest succeed', () => {
    const r = parseDeleteReply({ chk_fail_dict_l: [{ user_id_cdn: 'b', reason: 'user not found' }, 'c'] }, ['a', 'b', 'c']);
    expect(r.succeeded).to.deep.equal(['a']);
    expect(r.failed).to.deep.equal([{ userIdCdn: 'b', reason: 'user not found' }, { userIdCdn: 'c', reason: 'rejected by security platform' }]);
  });

  it('when the reply names an id we did not send, then nothing is assumed and the call is retryable', () => {
    expect(() => parseDeleteReply({ chk_fail_dict_l: [{ user_id_cdn: 'zzz' }] }, ['a'])).to.throw(SecplatRetryableError);
  });

  it('when a failure entry carries no id, then nothing is assumed and the call is retryable', () => {
    expect(() => parseDeleteReply({ chk_fail_dict_l: [{ reason: 'x' }] }, ['a'])).to.throw(SecplatRetryableError);
  });

  it('when the body has no chk_fail_dict_l, then the call is retryable rather than counted as success', () => {
    expect(() => parseDeleteReply({ status: 0 }, ['a'])).to.throw(SecplatRetryableError);
    expect(() => parseDeleteReply('<html>', ['a'])).to.throw(SecplatRetryableError);
  });
});

describe('job body', () => {
  it('when the body is a valid job, then messageId and attempt are returned', () => {
    expect(parseJob(Buffer.from('{"messageId":"pm01","attempt":2}'))).to.deep.equal({ messageId: 'pm01', attempt: 2 });
    expect(parseJob(Buffer.from('{"messageId":"pm01"}'))).to.deep.equal({ messageId: 'pm01', attempt: 0 });
  });

  for (const [what, body] of [
    ['not JSON', '{oops'], ['JSON null', 'null'], ['without messageId', '{"attempt":1}'],
    ['with a bad messageId', '{"messageId":"a b"}'], ['with a negative attempt', '{"messageId":"pm1","attempt":-1}'],
    ['with a fractional attempt', '{"messageId":"pm1","attempt":1.5}'],
  ] as const) {
    it(`when the body is ${what}, then it is unrecoverable (parked, not retried)`, () => {
      expect(() => parseJob(Buffer.from(body))).to.throw(UnrecoverableJobError);
    });
  }
});
