/**
 * The bench's workload: callbacks with fresh messageIds (fifty domains each unless told otherwise, or sizes
 * in rotation), and posting them to an API process with bounded concurrency (through the tests' own
 * callback helpers).
 */
import { callbackBody, postCallback } from '../test/helpers/env.js';

export const DOMAINS_PER_CALLBACK = 50;

export interface Workload {
  /** Every domain of every callback, in order. */
  domains: string[];
  /** One JSON body per callback. */
  bodies: string[];
}

/** The seed mix: callbacks of 1, 10, 49 and 50 domains in rotation. */
export const SEED_MIX = [1, 10, 49, 50] as const;

const domainsOf = (hex: string, n: number) => Array.from({ length: n }, (_, i) => `d${i}.${hex}.bench.example.com`);

/** Callbacks of `sizes` domains in rotation (sizes[i % sizes.length]) that add up to at least `domains` domains. */
export function callbacksFor(domains: number, sizes: readonly number[]): number {
  let n = 0;
  for (let total = 0; total < domains; n++) total += sizes[n % sizes.length]!;
  return n;
}

/**
 * Makes workloads whose messageIds (pm + 32 hex) never repeat within one bench run (`tag` is the run's).
 * Callback i has sizes[i % sizes.length] domains (fifty each by default).
 */
export function workloadMaker(tag: string): (callbacks: number, sizes?: readonly number[]) => Workload {
  let made = 0;
  return (callbacks, sizes = [DOMAINS_PER_CALLBACK]) => {
    const run = `${tag}${(made++).toString(16).padStart(2, '0')}`;
    const lists = Array.from({ length: callbacks }, (_, i) => {
      const hex = run + i.toString(16).padStart(24, '0');
      return { hex, domains: domainsOf(hex, sizes[i % sizes.length]!) };
    });
    return { domains: lists.flatMap((l) => l.domains), bodies: lists.map((l) => JSON.stringify(callbackBody(`pm${l.hex}`, l.domains))) };
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
