/**
 * The security-platform client: HTTP in, typed outcomes and errors out. It knows nothing of tokens'
 * sharing; the TokenManager decides which token to use and what a 401 means.
 */
import http from 'node:http';
import https from 'node:https';
import axios, { type AxiosInstance, AxiosError } from 'axios';
import { BadCredentialsError, SecplatRejectedError, SecplatRetryableError, TokenRejectedError } from '../lib/errors.js';

export interface FetchedToken { accessToken: string; expiresInSec: number }
export interface DeleteResult { succeeded: string[]; failed: { userIdCdn: string; reason: string }[] }

export interface SecplatApi {
  fetchToken(): Promise<FetchedToken>;
  deleteUsers(token: string, generation: number, userIds: string[]): Promise<DeleteResult>;
}

export interface SecplatClientOptions {
  baseUrl: string;
  clientId: string;
  username: string;
  password: string;
  timeoutMs: number;
  maxSockets?: number;
  /** Aborted when shutdown's deadline is reached: every call still in flight is cut. */
  signal?: AbortSignal;
}

export function createSecplatClient(opts: SecplatClientOptions): SecplatApi & { close(): void } {
  const agentOpts = { keepAlive: true, maxSockets: opts.maxSockets ?? 64 };
  const httpAgent = new http.Agent(agentOpts);
  const httpsAgent = new https.Agent(agentOpts);
  const api: AxiosInstance = axios.create({
    baseURL: opts.baseUrl,
    timeout: opts.timeoutMs,
    httpAgent,
    httpsAgent,
    // Every status is handled below; axios must not throw on 4xx/5xx.
    validateStatus: () => true,
    maxRedirects: 0,
    signal: opts.signal,
  });

  return {
    async fetchToken() {
      const form = new URLSearchParams({
        client_id: opts.clientId, grant_type: 'password', username: opts.username, password: opts.password,
      });
      const res = await send(() => api.post('/oauth/token', form.toString(), {
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
      }), 'token request');
      if (res.status === 400 || res.status === 401 || res.status === 403) {
        throw new BadCredentialsError(`token endpoint refused the credentials (HTTP ${res.status})`);
      }
      assertNotRetryable(res.status, 'token request');
      const body = res.data as { access_token?: unknown; expires_in?: unknown };
      if (res.status !== 200 || typeof body?.access_token !== 'string' || !body.access_token) {
        throw new SecplatRetryableError(`token endpoint answered HTTP ${res.status} without an access_token`, undefined, res.status);
      }
      const expiresInSec = Number(body.expires_in);
      return { accessToken: body.access_token, expiresInSec: Number.isFinite(expiresInSec) && expiresInSec > 0 ? expiresInSec : 3600 };
    },

    async deleteUsers(token, generation, userIds) {
      const res = await send(() => api.post('/v1.0/delete_user_info',
        { delete_user_info_list: userIds.map((id) => ({ user_id_cdn: id })) },
        { headers: { authorization: `Bearer ${token}` } }), 'delete_user_info');
      if (res.status === 401) throw new TokenRejectedError(generation);
      assertNotRetryable(res.status, 'delete_user_info');
      if (res.status !== 200) throw new SecplatRejectedError(`delete_user_info answered HTTP ${res.status}: ${describe(res.data)}`, res.status);
      return parseDeleteReply(res.data, userIds);
    },

    close() {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}

async function send<T>(call: () => Promise<T>, what: string): Promise<T> {
  try {
    return await call();
  } catch (err) {
    // Timeouts and network failures: the call may or may not have reached the platform; deleting is
    // idempotent there, so retrying later is safe.
    const code = err instanceof AxiosError ? err.code : undefined;
    if (code === AxiosError.ERR_CANCELED) {
      throw new SecplatRetryableError(`${what} cut at the shutdown deadline (SHUTDOWN_TIMEOUT_MS); the platform may or may not have acted, so it is retried`, err);
    }
    throw new SecplatRetryableError(`${what} failed: ${code ?? (err as Error).message}`, err);
  }
}

function assertNotRetryable(status: number, what: string): void {
  if (status === 429 || status >= 500) throw new SecplatRetryableError(`${what} answered HTTP ${status}`, undefined, status);
}

/** Entries listed in chk_fail_dict_l failed; every other requested entry succeeded. Reads a 200 reply's body. */
export function parseDeleteReply(data: unknown, userIds: string[]): DeleteResult {
  const body = data as { status?: unknown; chk_fail_dict_l?: unknown } | null;
  if (!body || typeof body !== 'object' || !Array.isArray(body.chk_fail_dict_l)) {
    throw new SecplatRetryableError(`delete_user_info answered 200 with an unexpected body: ${describe(data)}`, undefined, 200);
  }
  const failed = new Map<string, string>();
  for (const entry of body.chk_fail_dict_l as unknown[]) {
    if (typeof entry === 'string') { failed.set(entry, 'rejected by security platform'); continue; }
    const e = entry as Record<string, unknown>;
    const id = String(e.user_id_cdn ?? e.userIdCdn ?? e.id ?? '');
    const reason = String(e.reason ?? e.msg ?? e.message ?? e.error ?? 'rejected by security platform');
    if (id) failed.set(id, reason);
  }
  const requested = new Set(userIds);
  // A failure entry we cannot map to a requested id means we cannot tell which entries succeeded.
  if ([...failed.keys()].some((id) => !requested.has(id)) || (body.chk_fail_dict_l.length > 0 && failed.size === 0)) {
    throw new SecplatRetryableError(`delete_user_info reported failures for unknown ids: ${describe(body.chk_fail_dict_l)}`, undefined, 200);
  }
  return {
    succeeded: userIds.filter((id) => !failed.has(id)),
    failed: [...failed].map(([userIdCdn, reason]) => ({ userIdCdn, reason })),
  };
}

function describe(data: unknown): string {
  const s = typeof data === 'string' ? data : JSON.stringify(data);
  return (s ?? '').slice(0, 300);
}
