/**
 * Completes a credential-free PostgreSQL URL (the deployed `SHARDING_CONFIG_JSON` carries
 * none) with a user and password from a secret; a URL that already has a password is kept.
 *
 * @example
 * ```ts
 * withCredentials('postgresql://db.example:5432/ca_dms?sslmode=verify-full', 'app', 'p@ss');
 * // 'postgresql://app:p%40ss@db.example:5432/ca_dms?sslmode=verify-full'
 * ```
 */
export function withCredentials(url: string, user: string, password: string): string {
  const u = new URL(url);
  if (u.password !== '') return url;
  u.username = encodeURIComponent(user);
  u.password = encodeURIComponent(password);
  return u.toString();
}

/** A shard's primary and replica URLs completed with one login (see {@link withCredentials}). */
export function shardWithLogin<S extends { readonly database_url: string; readonly read_replicas: readonly string[] }>(shard: S, login: { readonly username: string; readonly password: string }): S {
  return {
    ...shard,
    database_url: withCredentials(shard.database_url, login.username, login.password),
    read_replicas: shard.read_replicas.map((r) => withCredentials(r, login.username, login.password)),
  };
}
