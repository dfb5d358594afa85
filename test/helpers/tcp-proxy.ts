/**
 * A TCP proxy of the test's own, in front of one service port, to cut or stall a connection without
 * touching the shared PostgreSQL, Redis or RabbitMQ that other people test against.
 *
 *   open     bytes flow both ways (the default)
 *   closed   every connection is reset and new ones are accepted then reset at once (the service is gone)
 *   stalled  connections are accepted but no byte moves either way (a black hole); resume() delivers the
 *            bytes held meanwhile, in order
 */
import net from 'node:net';

export interface TcpProxy {
  /** Port the proxy listens on (127.0.0.1). */
  readonly port: number;
  /** Connections currently forwarded (both sides open). */
  readonly connections: number;
  /** Connections accepted since the proxy started (including refused ones). */
  readonly accepted: number;
  /** Connections with bytes from the client held back while stalled (delivered by resume()). */
  readonly holding: number;
  /** `url` with its host and port replaced by the proxy's (user, path and query kept). */
  url(url: string): string;
  /** Drops every connection (RST) and refuses new ones until resume(). */
  close(): void;
  /** Accepts connections but stops forwarding bytes until resume(). */
  stall(): void;
  /** Back to forwarding: held bytes are delivered, new connections go through. */
  resume(): void;
  /** Closes the listener and every connection. Idempotent. */
  stop(): Promise<void>;
}

type Mode = 'open' | 'closed' | 'stalled';

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  /** Bytes held while stalled, per direction. */
  held: { toUpstream: Buffer[]; toClient: Buffer[] };
}

/** Starts a proxy on 127.0.0.1:0 forwarding to `target`. */
export async function startTcpProxy(target: { host?: string; port: number }): Promise<TcpProxy> {
  const host = target.host ?? '127.0.0.1';
  let mode: Mode = 'open';
  let stopped = false;
  let accepted = 0;
  const pairs = new Set<Pair>();

  const drop = (p: Pair) => {
    pairs.delete(p);
    // RST rather than FIN: a cut network does not say goodbye.
    if (!p.client.destroyed) p.client.resetAndDestroy();
    if (!p.upstream.destroyed) p.upstream.resetAndDestroy();
  };

  const forward = (p: Pair, from: net.Socket, to: net.Socket, held: Buffer[]) => {
    from.on('data', (chunk: Buffer) => {
      if (mode === 'stalled') { held.push(chunk); return; }
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    // A clean close on one side is passed on as a clean close; anything else (an error, or a close while
    // cut or stalled) resets both sides.
    from.on('end', () => { if (mode === 'open' && held.length === 0) to.end(); else drop(p); });
    from.on('error', () => drop(p));
    from.on('close', (hadError: boolean) => {
      if (hadError || mode !== 'open') drop(p);
      else if (!to.destroyed) to.end();
      if (p.client.destroyed && p.upstream.destroyed) pairs.delete(p);
    });
  };

  const server = net.createServer((client) => {
    accepted++;
    if (stopped || mode === 'closed') {
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect({ host, port: target.port });
    const p: Pair = { client, upstream, held: { toUpstream: [], toClient: [] } };
    pairs.add(p);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    forward(p, client, upstream, p.held.toUpstream);
    forward(p, upstream, client, p.held.toClient);
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as net.AddressInfo).port;

  return {
    port,
    get connections() { return pairs.size; },
    get accepted() { return accepted; },
    get holding() { return [...pairs].filter((p) => p.held.toUpstream.length > 0).length; },
    url(raw: string) {
      const u = new URL(raw);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    close() {
      mode = 'closed';
      for (const p of [...pairs]) drop(p);
    },
    stall() {
      if (mode === 'open') mode = 'stalled';
    },
    resume() {
      mode = 'open';
      for (const p of pairs) {
        for (const chunk of p.held.toUpstream.splice(0)) p.upstream.write(chunk);
        for (const chunk of p.held.toClient.splice(0)) p.client.write(chunk);
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      mode = 'closed';
      for (const p of [...pairs]) drop(p);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
