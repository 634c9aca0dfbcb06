/**
 * A loopback port that refuses connections and that no other test process can start listening
 * on meanwhile: the address of a server that is down.
 *
 * A port a free-port probe gave (and released) is free to every other process too: the test
 * processes running beside this one choose their servers' ports from the same kernel range, and
 * one of them may be handed that very port and bind it (3 times in 20,000 choices of another
 * process, each after the "dead" port was chosen), turning a test's unreachable server into a
 * reachable one (its PostgreSQL takes the tests' `postgres:postgres` login). The ports these
 * tests' servers bind all come from the kernel's ephemeral range (ip_local_port_range), through
 * probes or their own port 0; a privileged port below it is never handed out that way, and only
 * root may bind it. Port 1 first (tcpmux, unused), else the next privileged port that refuses.
 *
 * @example
 * ```ts
 * const url = `postgresql://postgres:postgres@127.0.0.1:${await refusedLoopbackPort()}/postgres`;
 * ```
 */
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { z } from 'zod';

const RANGE_FILE = '/proc/sys/net/ipv4/ip_local_port_range';
/** The file's two numbers, "low<tab>high". */
const portRange = z
  .string()
  .transform((text) => text.trim().split(/\s+/).map(Number))
  .pipe(z.tuple([z.number().int().min(2).max(65535), z.number().int().min(2).max(65535)]));

/** The lowest port of the kernel's ephemeral range: no port 0 binding or probe gets one below it. */
export function ephemeralRangeStart(): number {
  const text = readFileSync(RANGE_FILE, 'utf8');
  const parsed = portRange.safeParse(text);
  if (!parsed.success) throw new Error(`${RANGE_FILE}: expected two port numbers ("low high"), got ${JSON.stringify(text)}`);
  return parsed.data[0];
}

/** Whether a connection to 127.0.0.1:`port` is refused (nothing listens there). */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(false);
    });
    sock.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED'));
  });
}

let found: number | undefined;

/** A privileged loopback port on which nothing listens (checked once per process). */
export async function refusedLoopbackPort(): Promise<number> {
  if (found !== undefined && (await refused(found))) return found;
  const below = Math.min(1024, ephemeralRangeStart());
  for (let port = 1; port < below; port += 1) {
    if (await refused(port)) {
      found = port;
      return port;
    }
  }
  throw new Error(`every loopback port below ${below} accepts connections: none can stand for a server that is down`);
}
