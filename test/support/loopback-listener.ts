/**
 * The listening side of the loopback TCP stand-ins in test/support (tcp-proxy.ts, writer-proxy.ts,
 * pg-wire-recorder.ts): each listens on a free loopback port, keeps every socket it opens (the
 * client's and the one to the server behind it) so that closing it leaves none open, and closes
 * by destroying them all and then the listener. Written once here so that the three stay alike in
 * what they leave behind: a socket left open would keep a test server's connection (and the
 * server's shutdown) waiting.
 *
 * @example
 * ```ts
 * const sockets = new SocketSet();
 * const server = createServer((client) => { sockets.track(client); ... });
 * const port = await listenOnLoopback(server);
 * await closeListener(server, sockets);
 * ```
 */
import type { Server, Socket } from 'node:net';

/** The open sockets of a listener, each dropped from the set when it closes. */
export class SocketSet {
  readonly #open = new Set<Socket>();

  /**
   * Keeps `socket` until it closes and answers it. An 'error' on it is ignored (a reset, a
   * refused server connection; the socket then closes and leaves the set): without a listener it
   * would be an unhandled 'error' event, failing the whole run.
   */
  track(socket: Socket): Socket {
    this.#open.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => this.#open.delete(socket));
    return socket;
  }

  /** Destroys every socket still open. */
  destroyAll(): void {
    for (const s of this.#open) s.destroy();
    this.#open.clear();
  }
}

/** Listens on a free loopback port and answers it; a listen error (none free) rejects. */
export async function listenOnLoopback(server: Server): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  return typeof addr === 'object' && addr ? addr.port : 0;
}

/** Destroys every socket of `sockets`, then closes the listener (resolves once it is closed). */
export async function closeListener(server: Server, sockets: SocketSet): Promise<void> {
  sockets.destroyAll();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}
