/**
 * The baseline of `npm run bench`: the "seed-style" way of doing the same work, built into the bench only
 * so the service's figures have something to stand beside. Internal: started by bench/sections/baseline.ts
 * with one JSON argument, prints one JSON line.
 *
 * Each job (one callback of `domainsPerJob` domains) fetches its own token, then sends its domains in
 * chunks of `batchSize`, one call in flight, and never retries: a chunk answered 401 (its token was killed
 * by another job's fetch) or anything else but 200 is lost. `concurrency` jobs run at once, as callbacks
 * handled by several threads or hosts would. It reads no database (user_id_cdn = "u-" + domain), which only
 * makes it faster than it would be.
 */
import { performance } from 'node:perf_hooks';

export interface SeedStyleConfig {
  simUrl: string;
  clientId: string;
  username: string;
  password: string;
  jobs: number;
  domainsPerJob: number;
  batchSize: number;
  concurrency: number;
  /** Distinguishes this run's ids from any other run's. */
  tag: string;
}

export interface SeedStyleResult {
  elapsedMs: number;
  domains: number;
  deleted: number;
  /** Reported in chk_fail_dict_l (none in the bench workload). */
  refused: number;
  /** Never deleted and never retried: their call got 401 (or another non-200), or the job's token fetch failed. */
  lost: number;
  lostTo401: number;
  tokenFetches: number;
  calls: number;
  unauthorized: number;
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as SeedStyleConfig;

async function fetchToken(): Promise<string> {
  const res = await fetch(`${cfg.simUrl}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ client_id: cfg.clientId, grant_type: 'password', username: cfg.username, password: cfg.password }).toString(),
  });
  const body = (await res.json()) as { access_token?: string };
  if (res.status !== 200 || !body.access_token) throw new Error(`token endpoint answered ${res.status}`);
  return body.access_token;
}

async function main(): Promise<SeedStyleResult> {
  const r: SeedStyleResult = { elapsedMs: 0, domains: 0, deleted: 0, refused: 0, lost: 0, lostTo401: 0, tokenFetches: 0, calls: 0, unauthorized: 0 };
  let next = 0;
  const runJob = async (j: number) => {
    const ids = Array.from({ length: cfg.domainsPerJob }, (_, i) => `u-d${i}.${cfg.tag}-${j}.seed.example.com`);
    r.domains += ids.length;
    let token: string;
    try {
      token = await fetchToken();
      r.tokenFetches += 1;
    } catch {
      r.lost += ids.length;
      return;
    }
    for (let i = 0; i < ids.length; i += cfg.batchSize) {
      const chunk = ids.slice(i, i + cfg.batchSize);
      r.calls += 1;
      const res = await fetch(`${cfg.simUrl}/v1.0/delete_user_info`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ delete_user_info_list: chunk.map((id) => ({ user_id_cdn: id })) }),
      }).catch(() => undefined);
      const body = res ? ((await res.json().catch(() => ({}))) as { chk_fail_dict_l?: unknown[] }) : {};
      if (res?.status === 200) {
        const refused = Array.isArray(body.chk_fail_dict_l) ? body.chk_fail_dict_l.length : 0;
        r.refused += refused;
        r.deleted += chunk.length - refused;
      } else {
        if (res?.status === 401) {
          r.unauthorized += 1;
          r.lostTo401 += chunk.length;
        }
        r.lost += chunk.length; // no retry: "OK" was already said, the domains silently stay
      }
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: cfg.concurrency }, async () => {
    while (next < cfg.jobs) await runJob(next++);
  }));
  r.elapsedMs = performance.now() - t0;
  return r;
}

main().then((r) => {
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0);
}, (err: unknown) => {
  process.stderr.write(`seed-style baseline failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
