/**
 * A loopback stand-in for RDS Proxy across a failover: a PostgreSQL-protocol proxy whose client
 * connections outlive the server behind them. AWS documents that open connections through the
 * proxy "continue working during a failover": "the writer instance that the proxy is connected to
 * changes to a different DB instance ... the DB instance associated with the proxy changes while
 * the connection remains open" (RDS Proxy command-line examples,
 * https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.examples.html); the proxy
 * "automatically determines the current writer instance" and by default lends each transaction
 * any of its database connections (multiplexing; RDS Proxy concepts and terminology,
 * https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.howitworks.html).
 *
 * {@link WriterProxy.failover} does that to every client connection between transactions: its
 * server connection is closed and replaced by one to the new writer, logged in with the client's
 * own startup message and password (as RDS Proxy logs in with the user's secret); the client sees
 * nothing, not even the new server's parameter statuses or cancel key. A client connection in a
 * transaction, or with a statement under way, is closed instead (a transaction cannot move).
 * Plain TCP, and only the authentications a replayed message satisfies: trust and cleartext
 * `password` (the test servers' `--auth=password`); anything else closes the client connection.
 * A cancel request goes to the current writer, as sent (RDS Proxy passes none on at all).
 *
 * @example
 * ```ts
 * const proxy = await startWriterProxy(primary.port);
 * const pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${proxy.port}/postgres` });
 * await pool.query('select 1');
 * await proxy.failover(promoted.port); // the pool's idle connections now reach `promoted`
 * await proxy.close();
 * ```
 */
import { createConnection, createServer, type Socket } from 'node:net';
import { closeListener, listenOnLoopback, SocketSet } from './loopback-listener.js';

export interface WriterProxy {
  readonly port: number;
  /**
   * From now on the writer is on `port`: every idle client connection is moved there (resolves
   * once each has logged in again), every busy one is closed, new ones go there.
   */
  failover(port: number): Promise<void>;
  /**
   * A failover at the boundary between two transactions of one client connection: once the
   * server has answered a client message containing `text` and the connection is idle again
   * (ReadyForQuery, not in a transaction), {@link failover} to `port`, before the client's next
   * message is relayed (a multiplexing proxy lends each transaction whichever server connection it
   * has; across a failover, the next one is the new writer's). Once.
   */
  failoverAfter(text: string, port: number): void;
  /** How many client connections {@link failover} moved to another server, in all. */
  moved(): number;
  /** Closes every connection and the listener. */
  close(): Promise<void>;
}

const SSL_REQUEST = 80877103;
const GSS_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const AUTH_OK = 0;
const AUTH_CLEARTEXT = 3;

/** Complete messages out of a byte stream: typed (`type`, 4-byte length, body) or, first, untyped. */
class Framer {
  #pending = Buffer.alloc(0);
  constructor(private typed: boolean) {}
  /** Switches to typed messages (after the startup message). */
  startTyped(): void {
    this.typed = true;
  }
  push(chunk: Buffer): Buffer[] {
    this.#pending = Buffer.concat([this.#pending, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      const head = this.typed ? 1 : 0;
      if (this.#pending.length < head + 4) break;
      const total = head + this.#pending.readInt32BE(head);
      if (this.#pending.length < total) break;
      out.push(this.#pending.subarray(0, total));
      this.#pending = this.#pending.subarray(total);
      // Only the first message (or an SSL/GSS request and then the startup message) is untyped.
      if (!this.typed && out.length > 0) break;
    }
    return out;
  }
  /** What is left unframed (bytes of messages not complete yet). */
  rest(): Buffer {
    const rest = this.#pending;
    this.#pending = Buffer.alloc(0);
    return rest;
  }
}

/** One client connection and the server connection it is lent. */
interface Session {
  readonly client: Socket;
  upstream: Socket | undefined;
  startup: Buffer | undefined;
  password: Buffer | undefined;
  /** The last ReadyForQuery status ('I' idle, 'T' in a transaction, 'E' failed one), and whether a message was sent since. */
  status: string | undefined;
  busy: boolean;
  /** Client messages held while the session logs in on a new server. */
  held: Buffer[] | undefined;
  /** Set by {@link WriterProxy.failoverAfter} on the session that sent its text: fail over at its next idle ReadyForQuery. */
  failoverAt: number | undefined;
}

export async function startWriterProxy(targetPort: number): Promise<WriterProxy> {
  let writerPort = targetPort;
  let moved = 0;
  let after: { readonly text: Buffer; readonly port: number } | undefined;
  const sessions = new Set<Session>();
  const sockets = new SocketSet();

  /** Forwards the server's messages to the client, noting each ReadyForQuery; answers the function that takes the server's bytes. */
  const relay = (session: Session, upstream: Socket): ((chunk: Buffer) => void) => {
    const framer = new Framer(true);
    const feed = (chunk: Buffer): void => {
      if (session.upstream !== upstream) return;
      for (const message of framer.push(chunk)) {
        if (message[0] === 0x5a /* Z */) {
          session.status = String.fromCharCode(message[5] ?? 0);
          session.busy = false;
        }
        session.client.write(message);
        if (message[0] === 0x5a && session.status === 'I' && session.failoverAt !== undefined) {
          const to = session.failoverAt;
          session.failoverAt = undefined;
          // Synchronously: moveTo holds the client's next message from here on.
          void failover(to);
        }
      }
    };
    upstream.on('data', feed);
    upstream.on('close', () => {
      // A server connection the proxy did not replace ended (the server went away): so does the client's.
      if (session.upstream === upstream) session.client.destroy();
    });
    return feed;
  };

  const server = createServer((socket) => {
    const session: Session = { client: sockets.track(socket), upstream: undefined, startup: undefined, password: undefined, status: undefined, busy: false, held: undefined, failoverAt: undefined };
    sessions.add(session);
    socket.on('close', () => {
      sessions.delete(session);
      session.upstream?.destroy();
    });
    const framer = new Framer(false);
    socket.on('data', (chunk: Buffer) => {
      for (const message of framer.push(chunk)) {
        if (session.startup === undefined) {
          const code = message.readInt32BE(4);
          if (code === SSL_REQUEST || code === GSS_REQUEST) {
            socket.write('N');
            continue;
          }
          const upstream = sockets.track(createConnection({ host: '127.0.0.1', port: writerPort }));
          session.upstream = upstream;
          if (code === CANCEL_REQUEST) {
            upstream.end(message);
            continue;
          }
          session.startup = message;
          framer.startTyped();
          relay(session, upstream);
          upstream.write(message);
          continue;
        }
        // The first password message is the one a replayed login sends again.
        if (message[0] === 0x70 /* p */ && session.password === undefined && session.status === undefined) session.password = message;
        if (session.status !== undefined && message[0] !== 0x58 /* X */) session.busy = true;
        if (after !== undefined && message.includes(after.text)) {
          session.failoverAt = after.port;
          after = undefined;
        }
        if (session.held !== undefined) session.held.push(message);
        else session.upstream?.write(message);
      }
      // A partial message stays in the framer; nothing else is left.
    });
  });

  /** Logs `session` in on the writer at `port` with its own startup and password; resolves when the new server is ready. */
  const moveTo = (session: Session, port: number): Promise<void> =>
    new Promise<void>((resolve) => {
      const old = session.upstream;
      session.upstream = undefined;
      session.held = [];
      old?.destroy();
      const upstream = sockets.track(createConnection({ host: '127.0.0.1', port }));
      const framer = new Framer(true);
      let loggedIn = false;
      const fail = (): void => {
        session.client.destroy();
        resolve();
      };
      upstream.on('close', () => {
        if (!loggedIn) fail();
      });
      const login = (chunk: Buffer): void => {
        for (const message of framer.push(chunk)) {
          const type = String.fromCharCode(message[0] ?? 0);
          if (type === 'R') {
            const code = message.readInt32BE(5);
            if (code === AUTH_CLEARTEXT && session.password !== undefined) upstream.write(session.password);
            else if (code !== AUTH_OK) return fail();
          } else if (type === 'E') {
            return fail();
          } else if (type === 'Z') {
            // Logged in: the client's held messages go to the new server, and its answers to the client.
            upstream.off('data', login);
            loggedIn = true;
            session.upstream = upstream;
            const rest = framer.rest();
            const feed = relay(session, upstream);
            if (rest.length > 0) feed(rest);
            for (const held of session.held ?? []) upstream.write(held);
            session.held = undefined;
            moved += 1;
            return resolve();
          }
          // ParameterStatus, BackendKeyData, notices: the client has its first server's.
        }
      };
      upstream.on('data', login);
      upstream.on('connect', () => upstream.write(session.startup ?? Buffer.alloc(0)));
    });

  async function failover(to: number): Promise<void> {
    writerPort = to;
    const moves: Promise<void>[] = [];
    for (const session of sessions) {
      if (session.startup === undefined) continue;
      if (session.status !== 'I' || session.busy) session.client.destroy();
      else moves.push(moveTo(session, to));
    }
    await Promise.all(moves);
  }

  const port = await listenOnLoopback(server);
  return {
    port,
    failover,
    failoverAfter(text, to) {
      after = { text: Buffer.from(text), port: to };
    },
    moved: () => moved,
    close: () => closeListener(server, sockets),
  };
}
