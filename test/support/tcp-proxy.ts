/**
 * A loopback TCP proxy the tests can cut and restore, to take a real server (PostgreSQL) away
 * from a client and bring it back without restarting the server.
 *
 * @example
 * ```ts
 * const proxy = await startTcpProxy(pg.port);
 * const pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${proxy.port}/postgres` });
 * await proxy.cut();     // connections drop, new ones are refused
 * await proxy.restore(); // the same port accepts again
 * ```
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  readonly port: number;
  /** Closes the listener and destroys every open connection. */
  cut(): Promise<void>;
  /** Listens again on the same port. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = async (): Promise<void> => {
    const srv = createServer((client) => {
      const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => resolve());
    });
    const addr = srv.address();
    port = typeof addr === 'object' && addr ? addr.port : port;
    server = srv;
  };
  const cut = async (): Promise<void> => {
    const srv = server;
    server = undefined;
    for (const s of sockets) s.destroy();
    sockets.clear();
    if (srv) await new Promise<void>((resolve) => srv.close(() => resolve()));
  };
  await listen();
  return {
    get port() {
      return port;
    },
    cut,
    restore: listen,
    close: cut,
  };
}
