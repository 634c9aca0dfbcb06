/**
 * A loopback TCP proxy in front of a real PostgreSQL that records what clients send, read from
 * the frontend protocol itself: each connection's startup parameters, every simple query
 * (`Q`) and every extended-protocol parse (`P`, with its statement name). It sees exactly what
 * RDS Proxy would see, whatever the driver does on its own. Plain TCP only (loopback pools do
 * not ask for TLS).
 *
 * @example
 * ```ts
 * const rec = await startPgWireRecorder(server.port);
 * const pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${rec.port}/postgres` });
 * await pool.query('select 1');
 * rec.statements(); // [{ kind: 'parse', name: '', sql: 'select 1' }] or a simple query
 * ```
 */
import { createConnection, createServer } from 'node:net';
import { closeListener, listenOnLoopback, SocketSet } from './loopback-listener.js';

export interface RecordedStatement {
  readonly kind: 'simple' | 'parse';
  /** The prepared statement's name for a parse ('' = unnamed); always '' for a simple query. */
  readonly name: string;
  readonly sql: string;
}

export interface PgWireRecorder {
  readonly port: number;
  /** Startup parameters of every connection, in connection order. */
  startups(): ReadonlyArray<Readonly<Record<string, string>>>;
  statements(): readonly RecordedStatement[];
  clear(): void;
  close(): Promise<void>;
}

const SSL_REQUEST = 80877103;
const GSS_REQUEST = 80877104;

function cstrings(buf: Buffer, from: number): string[] {
  const out: string[] = [];
  let at = from;
  while (at < buf.length) {
    const end = buf.indexOf(0, at);
    if (end < 0) break;
    out.push(buf.toString('utf8', at, end));
    at = end + 1;
  }
  return out;
}

export async function startPgWireRecorder(targetPort: number): Promise<PgWireRecorder> {
  const startups: Array<Record<string, string>> = [];
  const statements: RecordedStatement[] = [];
  const sockets = new SocketSet();
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    for (const s of [client, upstream]) sockets.track(s);
    let pending = Buffer.alloc(0);
    let started = false;
    client.on('data', (chunk: Buffer) => {
      upstream.write(chunk);
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        if (!started) {
          if (pending.length < 8) return;
          const length = pending.readInt32BE(0);
          if (pending.length < length) return;
          const code = pending.readInt32BE(4);
          if (code !== SSL_REQUEST && code !== GSS_REQUEST) {
            const pairs = cstrings(pending.subarray(8, length), 0);
            const params: Record<string, string> = {};
            for (let i = 0; i + 1 < pairs.length; i += 2) params[pairs[i] ?? ''] = pairs[i + 1] ?? '';
            startups.push(params);
            started = true;
          }
          pending = pending.subarray(length);
          continue;
        }
        if (pending.length < 5) return;
        const type = String.fromCharCode(pending[0] ?? 0);
        const length = pending.readInt32BE(1);
        if (pending.length < 1 + length) return;
        const body = pending.subarray(5, 1 + length);
        if (type === 'Q') statements.push({ kind: 'simple', name: '', sql: cstrings(body, 0)[0] ?? '' });
        if (type === 'P') {
          const [name = '', sql = ''] = cstrings(body, 0);
          statements.push({ kind: 'parse', name, sql });
        }
        pending = pending.subarray(1 + length);
      }
    });
    upstream.pipe(client);
    client.on('end', () => upstream.end());
  });
  const port = await listenOnLoopback(server);
  return {
    port,
    startups: () => startups,
    statements: () => statements,
    clear() {
      startups.length = 0;
      statements.length = 0;
    },
    close: () => closeListener(server, sockets),
  };
}
