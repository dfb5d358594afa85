/**
 * The bench's workload: fifty-domain callbacks with fresh messageIds, and posting them to an API process
 * with bounded concurrency (through the tests' own callback helpers).
 */
import { callbackBody, postCallback } from '../test/helpers/env.js';

export const DOMAINS_PER_CALLBACK = 50;

export interface Workload {
  /** Every domain of every callback, in order. */
  domains: string[];
  /** One JSON body per callback. */
  bodies: string[];
}

const domainsOf = (hex: string) => Array.from({ length: DOMAINS_PER_CALLBACK }, (_, i) => `d${i}.${hex}.bench.example.com`);

/** Makes workloads whose messageIds (pm + 32 hex) never repeat within one bench run (`tag` is the run's). */
export function workloadMaker(tag: string): (callbacks: number) => Workload {
  let made = 0;
  return (callbacks) => {
    const run = `${tag}${(made++).toString(16).padStart(2, '0')}`;
    const ids = Array.from({ length: callbacks }, (_, i) => run + i.toString(16).padStart(24, '0'));
    return { domains: ids.flatMap(domainsOf), bodies: ids.map((hex) => JSON.stringify(callbackBody(`pm${hex}`, domainsOf(hex)))) };
  };
}

/** Posts callbacks with `concurrency` in flight; throws on the first reply other than 200. */
export async function postCallbacks(url: string, token: string, bodies: string[], concurrency = 8): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < bodies.length) {
      const res = await postCallback(url, bodies[next++]!, { 'x-callback-token': token });
      if (res.status !== 200) throw new Error(`callback answered ${res.status}: ${JSON.stringify(res.body).slice(0, 200)}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}
