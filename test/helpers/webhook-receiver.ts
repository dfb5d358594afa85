/**
 * A real local HTTP receiver for alarm notifications: records every request it gets (headers, body, the
 * Idempotency-Key) and answers as told. It can be down (nothing listens on its port), answer an error, be
 * slow, or hold a request until released, and it tells which answers actually reached the sender.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/** How to answer one request. Default: 200 with `{"errcode":0,"errmsg":"ok"}` (what WeCom and DingTalk send). */
export interface Answer {
  status?: number;
  body?: string;
  headers?: Record<string, string>;
  /** Answer only after this long (unless the sender gave up first). */
  delayMs?: number;
  /** Do not answer until release() (or until the sender gives up or dies). */
  hold?: boolean;
}

export interface ReceivedRequest {
  path: string;
  headers: http.IncomingHttpHeaders;
  /** The Idempotency-Key header. */
  key: string | undefined;
  raw: string;
  body: unknown;
  /** Status written, or null while held / when the sender went away before the answer. */
  status: number | null;
  /** The sender got a 2xx: the answer was written completely before the connection closed. */
  confirmed: boolean;
  /** The sender closed the connection before getting an answer (its timeout, or the process died). */
  senderGone: boolean;
}

export interface WebhookReceiver {
  /** Base URL of the receiver (http://127.0.0.1:<port>); append a path/query as the webhook URL. */
  readonly origin: string;
  readonly port: number;
  readonly requests: ReceivedRequest[];
  /** Answers for the next requests, in order; afterwards the default answer. */
  plan(...answers: Answer[]): void;
  setDefault(answer: Answer): void;
  /** Answers every held request (with `answer`, default 200 ok). */
  release(answer?: Answer): void;
  /** Requests the sender got a 2xx for. */
  confirmed(): ReceivedRequest[];
  /** Resolves once `n` requests have arrived. */
  waitForRequests(n: number, timeoutMs?: number): Promise<ReceivedRequest[]>;
  /** Stops listening and drops open connections: the sender gets "connection refused". */
  down(): Promise<void>;
  /** Listens again on the same port. */
  up(): Promise<void>;
  close(): Promise<void>;
}

const OK: Answer = { status: 200, body: '{"errcode":0,"errmsg":"ok"}' };

export async function startWebhookReceiver(opts: { port?: number } = {}): Promise<WebhookReceiver> {
  const requests: ReceivedRequest[] = [];
  const planned: Answer[] = [];
  let fallback: Answer = OK;
  const held: { answer: (a: Answer) => void }[] = [];
  const sockets = new Set<Socket>();
  const waiters: (() => void)[] = [];

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body: unknown = raw;
      try { body = JSON.parse(raw); } catch { /* kept raw */ }
      const key = req.headers['idempotency-key'];
      const record: ReceivedRequest = {
        path: req.url ?? '', headers: req.headers, key: Array.isArray(key) ? key[0] : key, raw, body,
        status: null, confirmed: false, senderGone: false,
      };
      requests.push(record);
      const answer = planned.shift() ?? fallback;
      let answered = false;
      let timer: NodeJS.Timeout | undefined;
      res.on('close', () => {
        clearTimeout(timer);
        if (!res.writableFinished) record.senderGone = true;
      });
      const send = (a: Answer) => {
        if (answered || res.destroyed || record.senderGone) return;
        answered = true;
        record.status = a.status ?? 200;
        res.writeHead(record.status, { 'content-type': 'application/json', ...a.headers });
        res.end(a.body ?? OK.body, () => { record.confirmed = record.status! >= 200 && record.status! < 300; });
      };
      if (answer.hold) held.push({ answer: send });
      else if (answer.delayMs) timer = setTimeout(() => send(answer), answer.delayMs);
      else send(answer);
      for (const w of waiters.splice(0)) w();
    });
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });

  const listen = (port: number) => new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve((server.address() as AddressInfo).port); });
  });
  const stop = () => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
  });

  const port = await listen(opts.port ?? 0);
  let listening = true;
  return {
    origin: `http://127.0.0.1:${port}`,
    port,
    requests,
    plan: (...answers) => { planned.push(...answers); },
    setDefault: (answer) => { fallback = answer; },
    release: (answer = OK) => { for (const h of held.splice(0)) h.answer(answer); },
    confirmed: () => requests.filter((r) => r.confirmed),
    async waitForRequests(n, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (requests.length < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`receiver got ${requests.length} of ${n} requests in ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(t); resolve(); });
        });
      }
      return requests.slice(0, n);
    },
    async down() {
      if (!listening) return;
      listening = false;
      await stop();
    },
    async up() {
      if (listening) return;
      await listen(port);
      listening = true;
    },
    async close() {
      held.splice(0);
      if (listening) {
        listening = false;
        await stop();
      }
    },
  };
}
