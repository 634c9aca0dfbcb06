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
import { createConnection, createServer } from 'node:net';
import { closeListener, listenOnLoopback, SocketSet } from './loopback-listener.js';

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
  const sockets = new SocketSet();
  let forwarding = true;
  let upstreamPort = targetPort;
  const server = createServer((client) => {
    client.on('error', () => undefined);
    if (!forwarding) {
      client.resetAndDestroy();
      return;
    }
    const upstream = createConnection({ host: '127.0.0.1', port: upstreamPort });
    for (const s of [client, upstream]) sockets.track(s);
    client.pipe(upstream).pipe(client);
  });
  const port = await listenOnLoopback(server);
  const cut = async (): Promise<void> => {
    forwarding = false;
    sockets.destroyAll();
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
      forwarding = false;
      await closeListener(server, sockets);
    },
  };
}
