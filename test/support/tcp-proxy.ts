/**
 * A loopback TCP proxy the tests can cut and restore, to take a real server (PostgreSQL) away
 * from a client and bring it back without restarting the server.
 *
 * The proxy keeps its port for its whole life: while cut, it accepts each new connection and
 * resets it at once (the client sees ECONNRESET, as quickly as a refusal). Closing the listener
 * and listening again on restore left the port free in between, for any other process of the
 * suite to take; the proxy then could not restore, or a client reached that process instead.
 *
 * @example
 * ```ts
 * const proxy = await startTcpProxy(pg.port);
 * const pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${proxy.port}/postgres` });
 * await proxy.cut();     // connections drop, new ones are reset
 * await proxy.restore(); // the same port accepts again
 * ```
 */
import { createConnection, createServer, type Socket } from 'node:net';

export interface TcpProxy {
  readonly port: number;
  /** Destroys every open connection; new ones are reset until {@link restore}. */
  cut(): Promise<void>;
  /** Forwards new connections again. */
  restore(): Promise<void>;
  /**
   * New connections go to `port` from now on; open ones stay where they are (as a DNS answer
   * that changes after a failover: a connection already open keeps its server).
   */
  retarget(port: number): void;
  /** Destroys every connection and closes the listener. */
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let forwarding = true;
  let upstreamPort = targetPort;
  const server = createServer((client) => {
    client.on('error', () => undefined);
    if (!forwarding) {
      client.resetAndDestroy();
      return;
    }
    const upstream = createConnection({ host: '127.0.0.1', port: upstreamPort });
    upstream.on('error', () => undefined);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  const cut = async (): Promise<void> => {
    forwarding = false;
    for (const s of sockets) s.destroy();
    sockets.clear();
  };
  return {
    port,
    cut,
    async restore() {
      forwarding = true;
    },
    retarget(port) {
      upstreamPort = port;
    },
    async close() {
      await cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
