/**
 * Free loopback ports for servers this process is about to start (local mode's PostgreSQL
 * servers, the tests' nginx and PostgreSQL).
 *
 * The kernel hands out a free port by binding port 0, and the port is free again as soon as that
 * probe closes: two calls in a row return the same port often (73 times in 1,000 calls on a
 * Linux machine with the default 28,232-port ephemeral range), and two servers started on one
 * such pair collide. A port given out here is therefore not given out again by this process
 * while it is among the last `REMEMBERED` ones; the caller's server holds it by then, or gave it
 * up. Other processes are not covered: a server that finds its port taken must still choose again.
 */
import { createServer } from 'node:net';

/** How many recently given ports are remembered (far more than one process starts at once). */
const REMEMBERED = 4096;
/** How many kernel choices are tried before a repeat is accepted as unavoidable. */
const TRIES = 64;

const given = new Set<number>();

function probe(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A loopback port that is free now and that this process has not given out recently. */
export async function freeLoopbackPort(): Promise<number> {
  let port = await probe();
  for (let tried = 1; given.has(port) && tried < TRIES; tried += 1) port = await probe();
  // Oldest first: a Set iterates in insertion order, and a port given again moves to the end.
  given.delete(port);
  given.add(port);
  if (given.size > REMEMBERED) given.delete(given.values().next().value as number);
  return port;
}
