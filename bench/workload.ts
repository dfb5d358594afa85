/**
 * The bench's workload: callbacks with fresh messageIds (fifty domains each unless told otherwise, or sizes
 * in rotation; bodies from the tests' own callback helper), and posting them to an API process with bounded
 * concurrency.
 */
import http from 'node:http';
import { callbackBody } from '../test/helpers/env.js';

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

/**
 * POSTs callback bodies to the API over keep-alive node:http sockets, resolving with the status and the
 * reply's text. Not fetch: the generator shares two cores with what it measures, and fetch (undici) took
 * about four times the CPU per request (the bench's own process, simulator included, used 42 % of a core
 * posting 1-domain callbacks at 840/s with fetch, 13 % at 1,080/s with this).
 */
export function callbackPoster(url: string, token: string, maxSockets: number): {
  post: (body: string) => Promise<{ status: number; text: string }>; close: () => void;
} {
  const target = new URL('/api/pm/pipe/callback', url);
  const agent = new http.Agent({ keepAlive: true, maxSockets });
  const post = (body: string) => new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = http.request({
      agent, hostname: target.hostname, port: target.port, path: target.pathname, method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-callback-token': token },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error('no reply within 30 s')));
    req.on('error', reject);
    req.end(body);
  });
  return { post, close: () => agent.destroy() };
}

/** Posts callbacks with `concurrency` in flight; throws on the first reply other than 200. */
export async function postCallbacks(url: string, token: string, bodies: string[], concurrency = 8): Promise<void> {
  const { post, close } = callbackPoster(url, token, concurrency);
  let next = 0;
  const worker = async () => {
    while (next < bodies.length) {
      const res = await post(bodies[next++]!);
      if (res.status !== 200) throw new Error(`callback answered ${res.status}: ${res.text.slice(0, 200)}`);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    close();
  }
}
