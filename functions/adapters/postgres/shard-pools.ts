/**
 * One `pg.Pool` per shard primary and per read replica, built from the sharding configuration.
 * Each node has a stable id (`shard_001/primary`, `shard_001/replica-1`) and a redacted endpoint
 * (`host:port/db`) that is safe to log or return from the API; connection strings with their
 * passwords never leave this module.
 *
 * @example
 * ```ts
 * const pools = ShardPools.fromConfig(config, { max: 10, connectionTimeoutMillis: 2000 });
 * const { rows } = await pools.primary('shard_001').pool.query('select 1');
 * for (const replica of pools.replicas('shard_001')) console.log(replica.nodeId, replica.endpoint);
 * await pools.end();
 * ```
 */
import pg from 'pg';
import { SecretPool, type LoginCredentials } from './secret-pool.js';
import { ListeningClient } from './listening-client.js';
import type { ShardConfig } from '../../core/sharding/config.js';
import { RoutingError } from '../../core/sharding/errors.js';
import { withRdsTls } from './tls.js';
import type { NodeRole } from '../../core/sharding/health.js';

export interface ShardNode {
  /** `<shard_id>/primary` or `<shard_id>/replica-<n>` (n from 1, in configuration order). */
  readonly nodeId: string;
  readonly shardId: string;
  readonly role: NodeRole;
  /** `host:port/database`: no user, no password. */
  readonly endpoint: string;
  readonly pool: pg.Pool;
}

export interface ShardPoolOptions {
  /** Connections per node. Default 10. */
  readonly max?: number;
  /** How long to wait for a connection before the node counts as unreachable. Default 2000 ms. */
  readonly connectionTimeoutMillis?: number;
  /** Idle connections are closed after this. Default 30000 ms. */
  readonly idleTimeoutMillis?: number;
  /** `application_name` reported to PostgreSQL. Default `ca-dms-scaling`. */
  readonly applicationName?: string;
  /**
   * Called when an idle pooled connection fails (the server restarted, the replica was stopped).
   * The message is pg's; the pool drops the connection by itself. Default: ignore.
   */
  readonly onIdleError?: (nodeId: string, error: Error) => void;
  /** The certificate authorities TLS connections are verified against. Default: the RDS bundle (tls.ts). */
  readonly ca?: readonly string[];
  /**
   * Where a shard's login comes from when it can change (a secret rotated with alternating
   * users): a connection refused for its credentials re-reads them and retries once
   * ({@link SecretPool}). Default: the URL's credentials, fixed.
   */
  readonly credentials?: (shardId: string) => Promise<LoginCredentials>;
}

/** `host:port/database` of a connection string, without credentials. */
export function endpointOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}${u.pathname || '/'}`;
  } catch {
    return '(unparseable connection string)';
  }
}

/**
 * The connection fields of a URL, the login apart: a `connectionString` would override the user
 * and password a {@link SecretPool} sets after re-reading its credentials.
 */
function loginFields(target: { connectionString: string; ssl: pg.PoolConfig['ssl'] }): pg.PoolConfig {
  const u = new URL(target.connectionString);
  return {
    host: u.hostname,
    port: Number(u.port || '5432'),
    database: decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    ssl: target.ssl,
  };
}

/**
 * One node's pool: verified TLS against the RDS CAs (the URL's sslmode would replace it with
 * Node's CAs), and, when `credentials` is given, a {@link SecretPool} that re-reads the login
 * after a refused connection. Shard pools and the demo backend's catalog pool are built here.
 */
export function createNodePool(url: string, options: Omit<ShardPoolOptions, 'credentials' | 'onIdleError'> = {}, credentials?: () => Promise<LoginCredentials>): pg.Pool {
  const config: pg.PoolConfig = {
    ...(credentials ? loginFields(withRdsTls(url, options.ca)) : withRdsTls(url, options.ca)),
    max: options.max ?? 10,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 2000,
    idleTimeoutMillis: options.idleTimeoutMillis ?? 30_000,
    application_name: options.applicationName ?? 'ca-dms-scaling',
    Client: ListeningClient,
  };
  return credentials ? new SecretPool(config, credentials) : new pg.Pool(config);
}

export class ShardPools {
  readonly #nodes = new Map<string, ShardNode>();
  readonly #byShard = new Map<string, { primary: ShardNode; replicas: ShardNode[] }>();

  private constructor() {}

  /** Creates (lazily connecting) pools for every primary and replica of `config.shards`. */
  static fromConfig(config: { readonly shards: readonly Pick<ShardConfig, 'shard_id' | 'database_url' | 'read_replicas'>[] }, options: ShardPoolOptions = {}): ShardPools {
    const pools = new ShardPools();
    const make = (shardId: string, nodeId: string, role: NodeRole, url: string): ShardNode => {
      const credentials = options.credentials;
      const pool = createNodePool(url, options, credentials && (() => credentials(shardId)));
      // Without a listener an idle connection's error would crash the process.
      pool.on('error', (error) => options.onIdleError?.(nodeId, error));
      const node: ShardNode = { nodeId, shardId, role, endpoint: endpointOf(url), pool };
      pools.#nodes.set(nodeId, node);
      return node;
    };
    for (const shard of config.shards) {
      const primary = make(shard.shard_id, `${shard.shard_id}/primary`, 'primary', shard.database_url);
      const replicas = shard.read_replicas.map((url, i) => make(shard.shard_id, `${shard.shard_id}/replica-${i + 1}`, 'replica', url));
      pools.#byShard.set(shard.shard_id, { primary, replicas });
    }
    return pools;
  }

  /** Shard ids in configuration order. */
  shardIds(): string[] {
    return [...this.#byShard.keys()];
  }

  /** The primary of `shardId`; throws a {@link RoutingError} (`unknown-shard`) for an unknown id. */
  primary(shardId: string): ShardNode {
    return this.#shard(shardId).primary;
  }

  /** The replicas of `shardId`, in configuration order. */
  replicas(shardId: string): readonly ShardNode[] {
    return this.#shard(shardId).replicas;
  }

  /** Every node: for each shard its primary, then its replicas. */
  nodes(): ShardNode[] {
    return [...this.#byShard.values()].flatMap((s) => [s.primary, ...s.replicas]);
  }

  /** The node with `nodeId`, or undefined. */
  node(nodeId: string): ShardNode | undefined {
    return this.#nodes.get(nodeId);
  }

  /** Closes every pool. */
  async end(): Promise<void> {
    await Promise.all([...this.#nodes.values()].map((n) => n.pool.end().catch(() => undefined)));
  }

  #shard(shardId: string): { primary: ShardNode; replicas: ShardNode[] } {
    const shard = this.#byShard.get(shardId);
    if (!shard) throw new RoutingError('unknown-shard', `unknown shard ${JSON.stringify(shardId)}; configured: ${this.shardIds().join(', ')}`);
    return shard;
  }
}
