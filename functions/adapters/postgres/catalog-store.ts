/**
 * The scaling catalog in PostgreSQL (`catalog` schema, migration set `catalog`): versioned
 * configuration, operator switches, per-service state, the decision history with its gaps, and
 * CloudWatch alarm notifications. It is the controller's {@link ControllerCatalog} and the
 * service the scaling API reads and writes.
 *
 * Concurrency: a service is evaluated inside a transaction holding the lock of its row in
 * `catalog.service_locks` (`for update skip locked`), so two evaluations never act on the same
 * service; the one that does not get the lock stands aside at once instead of waiting. Not an
 * advisory lock: any login of the catalog's database (on AWS the first shard's application
 * login) may take those, and would make every evaluation of the service stand aside (catalog
 * migration 007).
 *
 * Every function and operator a statement here calls matches one of pg_catalog's exactly (casts
 * such as `1000::double precision`, `$1::integer`) or is named with `pg_catalog.`: where PUBLIC
 * may create in the public schema (PostgreSQL 14), an application login's overload that matched
 * better than pg_catalog's polymorphic or implicitly cast one would run as the control login
 * (test/integration/controller/least-privilege.test.ts).
 *
 * @example
 * ```ts
 * const store = new CatalogStore(pool, { defaults: parseScalingConfig({}) });
 * const { version } = await store.putConfig({ cpu_scale_up: 75 }, { actor: 'alice', ifVersion: 0 });
 * await store.setSwitch({ scope: 'worker', enabled: false, actor: 'alice', reason: 'incident 42' });
 * const page = await store.listDecisions({ service: 'worker', limit: 20 });
 * ```
 */
import type pg from 'pg';
import { parseScalingConfig, resolveServiceConfig, type ScalingConfig } from '../../core/scaling/config.js';
import type { Backlog, ControlState, ControllerCatalog, DecisionRecord, LeaseOutcome, LeaseRequest, Outcome, ServiceSession, StoredServiceState, SwitchOff, Trigger } from '../../core/scaling/ports.js';
import type { Block, Direction, MetricsSnapshot, Reason, ServiceState } from '../../core/scaling/types.js';
import { LeaseError, LeaseStore } from './lease-store.js';
import { serverTimeoutMs } from './deadline.js';
import { retryingSerializationFailures } from './sqlstate.js';
import { SERVICE_LOCK_IDLE_MS, serviceLockCallBoundMs } from './statement-bounds.js';
import { inTransaction } from './transaction.js';

/** A catalog operation failed (connection, query); `cause` holds the driver's error. */
export class CatalogError extends Error {
  override readonly name = 'CatalogError';
}

/**
 * A stop or a configuration change was committed, but waiting for the evaluations still asking
 * the orchestrator for a change decided before it failed (the catalog login's
 * `statement_timeout` ran out while ECS was slow, or the connection was lost): the change is
 * stored and in force for every evaluation from now on, yet one change decided before it may
 * still be applied. Not a {@link CatalogError}: callers must not answer "nothing was stored".
 */
export class ChangeStoredUnsettledError extends Error {
  override readonly name = 'ChangeStoredUnsettledError';
  constructor(
    /** What was stored: `the stop`, `configuration version 4`. */
    readonly what: string,
    options: { readonly cause: unknown },
  ) {
    super(`catalog: ${what} is stored, but waiting for the evaluations applying a change decided before it failed: ${(options.cause as Error).message}`, options);
  }
}

/** A configuration write named a version that is no longer current (the API's 412). */
export class ConfigVersionConflictError extends Error {
  override readonly name = 'ConfigVersionConflictError';
  constructor(
    readonly expected: number,
    readonly current: number,
  ) {
    super(`configuration version ${expected} is not current (current: ${current})`);
  }
}

/** One stored configuration version. */
export interface StoredConfig {
  readonly version: number;
  /** The document as written (before defaults). */
  readonly document: Record<string, unknown>;
  /** The document with defaults applied. */
  readonly config: ScalingConfig;
  readonly changedBy: string;
  readonly changedAt: Date;
  readonly comment: string;
}

/** A switch: the global one has scope `*`. */
export interface Switch {
  readonly scope: string;
  readonly enabled: boolean;
  readonly changedBy: string;
  readonly changedAt: Date;
  readonly reason: string;
}

/** A decision as stored, with its id (the history's cursor). */
export interface StoredDecision extends DecisionRecord {
  readonly id: number;
  readonly recordedAt: Date;
}

export interface HistoryGap {
  readonly id: number;
  readonly fromAt: Date;
  readonly toAt: Date;
  readonly decisions: number;
  readonly note: string;
  readonly recordedAt: Date;
}

export interface AlarmRecord {
  readonly messageId: string;
  readonly alarmName: string;
  readonly newState: string;
  readonly service?: string;
  readonly reason: string;
  readonly stateChangedAt?: Date;
}

export interface DecisionQuery {
  readonly service?: string;
  readonly outcome?: Outcome;
  /** Only decisions with an id below this (the previous page's last id). */
  readonly beforeId?: number;
  readonly since?: Date;
  readonly until?: Date;
  /** 1..500, default 50. */
  readonly limit?: number;
}

export interface CatalogStoreOptions {
  /** The configuration in force while the catalog holds no version yet. */
  readonly defaults: ScalingConfig;
  /**
   * How long a transaction holding a service's lock may sit idle (the orchestrator being asked)
   * before the server ends it and frees the lock. Default {@link SERVICE_LOCK_IDLE_MS}.
   */
  readonly serviceLockIdleMs?: number;
}

const GLOBAL_SCOPE = '*';

interface DecisionRow {
  id: string;
  decided_at: Date;
  service: string;
  trigger: Trigger;
  policy: string;
  from_count: number;
  to_count: number;
  direction: Direction;
  reasons: Reason[];
  blocked: Block[];
  metrics: MetricsSnapshot | null;
  dry_run: boolean;
  outcome: Outcome;
  error: string | null;
  actor: string | null;
  degraded: boolean;
  config_version: number | null;
  recorded_at: Date;
}

function toDecision(row: DecisionRow): StoredDecision {
  return {
    id: Number(row.id),
    at: row.decided_at.getTime(),
    service: row.service,
    trigger: row.trigger,
    policy: row.policy,
    from: row.from_count,
    to: row.to_count,
    direction: row.direction,
    reasons: row.reasons,
    blocked: row.blocked,
    metrics: row.metrics,
    dryRun: row.dry_run,
    outcome: row.outcome,
    ...(row.error === null ? {} : { error: row.error }),
    ...(row.actor === null ? {} : { actor: row.actor }),
    degraded: row.degraded,
    ...(row.config_version === null ? {} : { configVersion: row.config_version }),
    recordedAt: row.recorded_at,
  };
}

const INSERT_DECISION = `insert into catalog.scaling_decisions
  (decided_at, service, trigger, policy, from_count, to_count, direction, reasons, blocked, metrics, dry_run, outcome, error, actor, degraded, config_version)
  values (to_timestamp($1::double precision / 1000::double precision), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`;

function decisionParams(r: DecisionRecord): unknown[] {
  return [
    r.at,
    r.service,
    r.trigger,
    r.policy,
    r.from,
    r.to,
    r.direction,
    JSON.stringify(r.reasons),
    JSON.stringify(r.blocked),
    r.metrics === null ? null : JSON.stringify(r.metrics),
    r.dryRun,
    r.outcome,
    r.error ?? null,
    r.actor ?? null,
    r.degraded,
    r.configVersion ?? null,
  ];
}

type Queryable = Pick<pg.Pool, 'query'> | pg.PoolClient;

async function wrap<T>(what: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof CatalogError || err instanceof ConfigVersionConflictError) throw err;
    throw new CatalogError(`catalog: ${what} failed: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * A pool, or how to get one: in Lambda the pool is built on first use from a secret, and a
 * failure to build it must look like an unreachable catalog rather than break the cold start.
 */
export type PoolSource = pg.Pool | (() => Promise<pg.Pool>);

/** The PostgreSQL catalog. Give it a pool (or a pool factory); it never ends the pool. */
export class CatalogStore implements ControllerCatalog {
  private readonly source: PoolSource;
  private readonly leases: LeaseStore;

  constructor(
    source: PoolSource,
    private readonly options: CatalogStoreOptions,
  ) {
    this.source = source;
    this.leases = new LeaseStore(source);
  }

  /** Takes a named lease or reports its holder (see {@link LeaseStore}). */
  async acquireLease(name: string, request: LeaseRequest): Promise<LeaseOutcome> {
    try {
      return await wrap(`taking the lease ${name}`, () => this.leases.acquire(name, request));
    } catch (err) {
      if (err instanceof CatalogError && err.cause instanceof LeaseError) throw err.cause;
      throw err;
    }
  }

  private async db(): Promise<pg.Pool> {
    return typeof this.source === 'function' ? this.source() : this.source;
  }

  /** The configuration in force, or `undefined` while none was ever written. */
  async getConfig(): Promise<StoredConfig | undefined> {
    return wrap('reading the configuration', async () => this.readConfig(await this.db()));
  }

  private async readConfig(db: Queryable): Promise<StoredConfig | undefined> {
    const { rows } = await db.query<{ version: number; document: Record<string, unknown>; changed_by: string; changed_at: Date; comment: string }>(
      'select version, document, changed_by, changed_at, comment from catalog.scaling_config order by version desc limit 1',
    );
    const row = rows[0];
    if (!row) return undefined;
    return { version: row.version, document: row.document, config: parseScalingConfig(row.document), changedBy: row.changed_by, changedAt: row.changed_at, comment: row.comment };
  }

  /**
   * Stores a new configuration version. The document is validated first (throws
   * `ScalingConfigError` naming every problem; nothing is written). With `ifVersion`, the write
   * succeeds only if that version is still current (`0` = no version yet); otherwise throws
   * {@link ConfigVersionConflictError}. Answered once no evaluation is still asking the
   * orchestrator for a change decided under the version before (see {@link awaitChangesInFlight}).
   */
  async putConfig(document: Record<string, unknown>, opts: { actor: string; comment?: string; ifVersion?: number }): Promise<StoredConfig> {
    const config = parseScalingConfig(document);
    const stored = await wrap('writing the configuration', async () =>
      inTransaction(await this.db(), 'begin', async (client) => {
        // Serialises writers so "current version" cannot change between the check and the insert.
        await client.query('lock table catalog.scaling_config in share row exclusive mode');
        const { rows } = await client.query<{ v: number }>('select coalesce(max(version), 0)::int as v from catalog.scaling_config');
        const current = rows[0]?.v ?? 0;
        if (opts.ifVersion !== undefined && opts.ifVersion !== current) throw new ConfigVersionConflictError(opts.ifVersion, current);
        const inserted = await client.query<{ changed_at: Date }>(
          'insert into catalog.scaling_config (version, document, changed_by, comment) values ($1, $2, $3, $4) returning changed_at',
          [current + 1, JSON.stringify(document), opts.actor, opts.comment ?? ''],
        );
        const changedAt = inserted.rows[0]?.changed_at ?? new Date();
        return { version: current + 1, document, config, changedBy: opts.actor, changedAt, comment: opts.comment ?? '' };
      }),
    );
    await this.awaitChangesInFlight(undefined, `configuration version ${stored.version}`);
    return stored;
  }

  /**
   * Stores `change(current)` as the next version, with writers serialised from the read of the
   * current configuration to the insert, so concurrent changes each apply to the one before and
   * none is refused or lost (a merge patch sent without If-Match). `current` is the configuration
   * in force (the defaults while none was stored, version 0). What `change` throws (a refused
   * patch) is thrown as it is, and nothing is written; so is the `ScalingConfigError` of a
   * document it returns that is not a valid configuration.
   */
  async updateConfig(
    change: (current: { readonly version: number; readonly config: ScalingConfig }) => Record<string, unknown> | Promise<Record<string, unknown>>,
    opts: { actor: string; comment?: string },
  ): Promise<StoredConfig> {
    let refusal: { readonly error: unknown } | undefined;
    let written: StoredConfig;
    try {
      written = await wrap('writing the configuration', async () =>
        inTransaction(await this.db(), 'begin', async (client) => {
          await client.query('lock table catalog.scaling_config in share row exclusive mode');
          const stored = await this.readConfig(client);
          const version = stored?.version ?? 0;
          let document: Record<string, unknown>;
          let config: ScalingConfig;
          try {
            document = await change({ version, config: stored?.config ?? this.options.defaults });
            // An invalid document is refused as putConfig refuses it (ScalingConfigError), not
            // reported as a catalog failure (which the API answers 503, "unreachable").
            config = parseScalingConfig(document);
          } catch (err) {
            refusal = { error: err };
            throw err;
          }
          const inserted = await client.query<{ changed_at: Date }>(
            'insert into catalog.scaling_config (version, document, changed_by, comment) values ($1, $2, $3, $4) returning changed_at',
            [version + 1, JSON.stringify(document), opts.actor, opts.comment ?? ''],
          );
          return { version: version + 1, document, config, changedBy: opts.actor, changedAt: inserted.rows[0]?.changed_at ?? new Date(), comment: opts.comment ?? '' };
        }),
      );
    } catch (err) {
      if (refusal !== undefined) throw refusal.error;
      throw err;
    }
    await this.awaitChangesInFlight(undefined, `configuration version ${written.version}`);
    return written;
  }

  /** Lists configuration versions, newest first. */
  async listConfigVersions(limit = 20): Promise<StoredConfig[]> {
    return wrap('listing configuration versions', async () => {
      const { rows } = await (await this.db()).query<{ version: number; document: Record<string, unknown>; changed_by: string; changed_at: Date; comment: string }>(
        'select version, document, changed_by, changed_at, comment from catalog.scaling_config order by version desc limit $1',
        [limit],
      );
      return rows.map((r) => ({ version: r.version, document: r.document, config: parseScalingConfig(r.document), changedBy: r.changed_by, changedAt: r.changed_at, comment: r.comment }));
    });
  }

  /** Turns the global switch (`scope: '*'`) or a service's switch on or off. */
  /**
   * Sets a switch and says whether that changed it. Writers are serialised (the switches' table
   * locked in SHARE ROW EXCLUSIVE mode to commit, which readers pass and which no login but the
   * control plane's may take), so of several concurrent identical calls exactly one reports
   * `changed`. An absent scope counts as enabled. A stop is answered only once no evaluation of
   * the services it stops is still asking the orchestrator for a change it decided before the
   * stop (see {@link awaitChangesInFlight}).
   */
  async setSwitch(s: { scope: string; enabled: boolean; actor: string; reason?: string }): Promise<Switch & { readonly changed: boolean }> {
    const set = await wrap('setting a switch', async () =>
      inTransaction(await this.db(), 'begin', async (client) => {
        await client.query('lock table catalog.scaling_switches in share row exclusive mode');
        const before = await client.query<{ enabled: boolean }>('select enabled from catalog.scaling_switches where scope = $1', [s.scope]);
        const { rows } = await client.query<{ changed_at: Date }>(
          `insert into catalog.scaling_switches (scope, enabled, changed_by, reason) values ($1, $2, $3, $4)
           on conflict (scope) do update set enabled = excluded.enabled, changed_by = excluded.changed_by, reason = excluded.reason, changed_at = now()
           returning changed_at`,
          [s.scope, s.enabled, s.actor, s.reason ?? ''],
        );
        const changed = (before.rows[0]?.enabled ?? true) !== s.enabled;
        return { scope: s.scope, enabled: s.enabled, changedBy: s.actor, changedAt: rows[0]?.changed_at ?? new Date(), reason: s.reason ?? '', changed };
      }),
    );
    if (!s.enabled) await this.awaitChangesInFlight(s.scope === GLOBAL_SCOPE ? undefined : s.scope, 'the stop');
    return set;
  }

  /**
   * Waits until no evaluation is asking the orchestrator for a change of `service` (of any
   * service when omitted). An evaluation holds its service's lock from its last look at the
   * switches and the configuration until the orchestrator has answered, so once this returns,
   * every change still to be asked for will see what the caller has just committed: a stop or a
   * configuration change answered after this never precedes a scale action that ignores it.
   * The share lock is held for this statement only (an evaluation starting in that instant
   * stands aside and the next one evaluates the service).
   */
  private async awaitChangesInFlight(service: string | undefined, what: string): Promise<void> {
    try {
      const db = await this.db();
      if (service === undefined) await db.query('select service from catalog.service_locks for share');
      else await db.query('select service from catalog.service_locks where service = $1::text for share', [service]);
    } catch (err) {
      // Bounded by the login's statement_timeout (10 s), which an orchestrator call retried by
      // the SDK can outlast: what the caller asked for has committed all the same.
      throw new ChangeStoredUnsettledError(what, { cause: err });
    }
  }

  /** Every switch ever set; absent scopes are enabled. */
  async getSwitches(): Promise<Switch[]> {
    return wrap('reading switches', async () => {
      const { rows } = await (await this.db()).query<{ scope: string; enabled: boolean; changed_by: string; changed_at: Date; reason: string }>(
        'select scope, enabled, changed_by, changed_at, reason from catalog.scaling_switches order by scope',
      );
      return rows.map((r) => ({ scope: r.scope, enabled: r.enabled, changedBy: r.changed_by, changedAt: r.changed_at, reason: r.reason }));
    });
  }

  async loadControl(): Promise<ControlState> {
    return wrap('loading the control state', async () => {
      const [stored, switches] = await Promise.all([this.readConfig(await this.db()), this.getSwitches()]);
      const serviceEnabled = Object.fromEntries(switches.filter((s) => s.scope !== GLOBAL_SCOPE).map((s) => [s.scope, s.enabled]));
      const global = switches.find((s) => s.scope === GLOBAL_SCOPE);
      return { config: stored?.config ?? this.options.defaults, version: stored?.version ?? 0, globalEnabled: global?.enabled ?? true, serviceEnabled };
    });
  }

  /** One service's stored state. */
  async getServiceState(service: string): Promise<ServiceState | undefined> {
    return wrap('reading service state', async () => {
      const { rows } = await (await this.db()).query<{ state: ServiceState }>('select state from catalog.service_state where service = $1', [service]);
      return rows[0]?.state;
    });
  }

  /** Every service's stored state with when it last changed (the API's status view). */
  async listServiceStates(): Promise<Array<{ service: string; state: ServiceState; updatedAt: Date }>> {
    return wrap('listing service states', async () => {
      const { rows } = await (await this.db()).query<{ service: string; state: ServiceState; updated_at: Date }>('select service, state, updated_at from catalog.service_state order by service');
      return rows.map((r) => ({ service: r.service, state: r.state, updatedAt: r.updated_at }));
    });
  }

  async withServiceLock<T>(service: string, work: (session: ServiceSession) => Promise<T>, options: { readonly wait?: boolean } = {}): Promise<{ acquired: true; value: T } | { acquired: false }> {
    const db = await wrap('connecting', async () => this.db());
    try {
      // The service's lock row, once: a statement of its own, outside the transaction, so that a
      // first evaluation does not hold the row's insertion (which another would wait for) to its end.
      // Sent again on 40001 (retryingSerializationFailures): at the login's or the database's
      // default_transaction_isolation, REPEATABLE READ failed one that waited for another first
      // evaluation's insert of the row once that committed (the row not in its snapshot), and the
      // evaluation with it, as if the catalog were unreachable (catalog-store.test.ts; issue #15).
      await retryingSerializationFailures(() => db.query('insert into catalog.service_locks (service) values ($1::text) on conflict (service) do nothing', [service]));
      // The lock is held while the orchestrator is asked: the session is idle in transaction for
      // the whole call, which no statement_timeout bounds. A client that never comes back (a
      // Lambda timed out or frozen mid-call, its connection kept open by RDS Proxy) would hold the
      // lock, and every stop would wait for it, until the server noticed; the server ends the
      // transaction instead once it has sat idle longer than any ECS call may last
      // (SERVICE_LOCK_IDLE_MS). SET LOCAL, not a role default: a role default would end an idle
      // transaction of every session of the control login (the API, an operator's psql), and
      // ALTER ROLE reaches the migrating login too. RDS Proxy: AWS's pinning page lists "SET
      // commands" for PostgreSQL without telling SET LOCAL apart; AWS's own pinning reference
      // (agent-toolkit-for-aws, proxy-pinning-postgresql.md) says SET LOCAL pins for the
      // transaction only, during which the client connection is bound to one database connection
      // anyway. Were the proxy to pin the rest of the session all the same, that is the evaluate
      // function's one pooled connection (one evaluation at a time, under the lease) until the pool
      // closes it idle: one database connection, bounded, against a lock held without bound.
      const idleMs = serverTimeoutMs(this.options.serviceLockIdleMs ?? SERVICE_LOCK_IDLE_MS);
      // READ COMMITTED whatever the login's or the database's default_transaction_isolation (an
      // RDS parameter group, an ALTER ROLE ... SET): the reads under the lock (the service's state,
      // the switches, the configuration) must see what the previous holder, or a stop, committed
      // while this transaction waited for the lock. At REPEATABLE READ they used the snapshot of
      // the locking statement, taken before that commit: a waiting evaluation read the state the
      // holder had replaced (its `pending` change settled, say) and its save then failed on the row
      // the holder updated (40001), after the orchestrator may have been asked
      // (catalog-store.test.ts; issue #15).
      return await inTransaction(db, `begin isolation level read committed; set local idle_in_transaction_session_timeout = ${idleMs}`, async (client) => {
        const lock = `select true as locked from catalog.service_locks where service = $1::text for update${options.wait ? '' : ' skip locked'}`;
        const { rows } = await client.query<{ locked: boolean }>(lock, [service]);
        // Another evaluation holds the service, or a stop or configuration change its share lock
        // (awaitChangesInFlight): the empty transaction just ends, the decision recorded skipped.
        // Not waited for, even briefly: that share lock lasts one statement, an instant unless it
        // waits for an evaluation's lock (only the same evaluation's, under the lease), and telling
        // a share holder from an evaluation would take another statement on every skip.
        if (rows[0]?.locked !== true) return { acquired: false } as const;
        // Counted from the lock's taking, before any statement that restarts the server's idle
        // clock: the call it cuts ends ahead of the server's bound by the margin at least.
        const expiring = AbortSignal.timeout(serviceLockCallBoundMs(idleMs));
        const session: ServiceSession = {
          expiring,
          loadState: async () => (await client.query<{ state: StoredServiceState }>('select state from catalog.service_state where service = $1', [service])).rows[0]?.state,
          stoppedBy: async () => {
            const { rows } = await client.query<{ scope: string; changed_by: string }>(
              `select scope, changed_by from catalog.scaling_switches where scope in ($1::text, $2::text) and not enabled order by scope = $1::text desc limit 1`,
              [GLOBAL_SCOPE, service],
            );
            const off = rows[0];
            if (off !== undefined) return { kind: 'switch', scope: off.scope, changedBy: off.changed_by };
            const stored = await this.readConfig(client);
            if (stored === undefined) return undefined;
            // A configuration that no longer names the service stops it as `enabled: false` does:
            // the controller scales only the services the configuration names.
            if (!Object.hasOwn(stored.config.services, service)) return { kind: 'config', version: stored.version, changedBy: stored.changedBy, removed: true };
            const disabled = !stored.config.enabled || !resolveServiceConfig(stored.config, service).enabled;
            return disabled ? { kind: 'config', version: stored.version, changedBy: stored.changedBy } : undefined;
          },
          switchesOff: async () => {
            const { rows } = await client.query<{ scope: string; changed_by: string; changed_at: Date }>(
              'select scope, changed_by, changed_at from catalog.scaling_switches where scope in ($1::text, $2::text) and not enabled',
              [GLOBAL_SCOPE, service],
            );
            const off = (scope: string): SwitchOff | undefined => {
              const row = rows.find((r) => r.scope === scope);
              return row === undefined ? undefined : { changedBy: row.changed_by, changedAt: row.changed_at };
            };
            return { global: off(GLOBAL_SCOPE), own: off(service) };
          },
          configuration: async () => {
            const stored = await this.readConfig(client);
            return stored === undefined ? undefined : { version: stored.version, config: stored.config, changedBy: stored.changedBy };
          },
          saveState: async (state) => {
            await client.query(
              `insert into catalog.service_state (service, state) values ($1, $2)
               on conflict (service) do update set state = excluded.state, updated_at = now()`,
              [service, JSON.stringify(state)],
            );
          },
          recordDecision: async (record) => {
            await client.query(INSERT_DECISION, decisionParams(record));
          },
        };
        return { acquired: true, value: await work(session) } as const;
      });
    } catch (err) {
      throw new CatalogError(`catalog: evaluating ${service} under its lock failed: ${(err as Error).message}`, { cause: err });
    }
  }

  async recordDecision(record: DecisionRecord): Promise<void> {
    await wrap('recording a decision', async () => (await this.db()).query(INSERT_DECISION, decisionParams(record)));
  }

  async appendBacklog(backlog: Backlog): Promise<void> {
    await wrap('writing the backlog', async () =>
      inTransaction(await this.db(), 'begin', async (client) => {
        for (const record of backlog.records) await client.query(INSERT_DECISION, decisionParams(record));
        if (backlog.dropped > 0) {
          await client.query(
            `insert into catalog.history_gaps (from_at, to_at, decisions, note)
             values (to_timestamp($1::double precision / 1000::double precision), to_timestamp($2::double precision / 1000::double precision), $3, $4)`,
            [
              backlog.droppedFrom ?? 0,
              backlog.droppedTo ?? backlog.droppedFrom ?? 0,
              backlog.dropped,
              `${backlog.dropped} decision(s) were logged elsewhere (the function's structured logs) while the catalog was unreachable`,
            ],
          );
        }
      }),
    );
  }

  /**
   * Each named service's newest applied decision, in one round trip (one index probe per
   * service on the partial index of applied decisions). Services that never changed are absent.
   */
  async lastAppliedDecisions(services: readonly string[]): Promise<Map<string, StoredDecision>> {
    if (services.length === 0) return new Map();
    return wrap('reading the last applied decisions', async () => {
      const { rows } = await (await this.db()).query<DecisionRow>(
        `select d.* from pg_catalog.unnest($1::text[]) as s(service)
         cross join lateral (
           select * from catalog.scaling_decisions
           where service = s.service and outcome = 'applied'
           order by decided_at desc, id desc
           limit 1
         ) d`,
        [services],
      );
      return new Map(rows.map((r) => [r.service, toDecision(r)]));
    });
  }

  /**
   * The decision history, newest first. Page with `beforeId` set to the last id of the
   * previous page.
   */
  async listDecisions(q: DecisionQuery = {}): Promise<StoredDecision[]> {
    const limit = Math.min(Math.max(q.limit ?? 50, 1), 500);
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (sql: string, value: unknown): void => {
      params.push(value);
      where.push(sql.replace('?', `$${params.length}`));
    };
    if (q.service !== undefined) add('service = ?', q.service);
    if (q.outcome !== undefined) add('outcome = ?', q.outcome);
    if (q.beforeId !== undefined) add('id < ?', q.beforeId);
    if (q.since !== undefined) add('decided_at >= ?', q.since);
    if (q.until !== undefined) add('decided_at < ?', q.until);
    params.push(limit);
    const sql = `select * from catalog.scaling_decisions ${where.length ? `where ${where.join(' and ')}` : ''} order by decided_at desc, id desc limit $${params.length}`;
    return wrap('listing decisions', async () => (await (await this.db()).query<DecisionRow>(sql, params)).rows.map(toDecision));
  }

  /** Spans of history that only the function's logs hold, newest first. */
  async listGaps(limit = 50): Promise<HistoryGap[]> {
    return wrap('listing history gaps', async () => {
      const { rows } = await (await this.db()).query<{ id: string; from_at: Date; to_at: Date; decisions: number; note: string; recorded_at: Date }>(
        'select id, from_at, to_at, decisions, note, recorded_at from catalog.history_gaps order by recorded_at desc, id desc limit $1',
        [limit],
      );
      return rows.map((r) => ({ id: Number(r.id), fromAt: r.from_at, toAt: r.to_at, decisions: r.decisions, note: r.note, recordedAt: r.recorded_at }));
    });
  }

  /**
   * Records an alarm notification. Returns `false` when this SNS message id was already
   * recorded (a redelivery), in which case nothing else should happen.
   */
  async recordAlarm(alarm: AlarmRecord): Promise<boolean> {
    return wrap('recording an alarm', async () => {
      const db = await this.db();
      // Sent again on 40001: at REPEATABLE READ a delivery that waited for another delivery's
      // insert of the same message failed once that committed (its row not in the snapshot), and
      // the alarm function, taking the catalog for unreachable, evaluated the redelivery as a new
      // alarm (catalog-store.test.ts; issue #15). Sent again, it finds the row: a redelivery.
      const { rowCount } = await retryingSerializationFailures(() =>
        db.query(
          `insert into catalog.scaling_alarms (message_id, alarm_name, new_state, service, reason, state_changed_at)
           values ($1, $2, $3, $4, $5, $6) on conflict (message_id) do nothing`,
          [alarm.messageId, alarm.alarmName, alarm.newState, alarm.service ?? null, alarm.reason, alarm.stateChangedAt ?? null],
        ),
      );
      return rowCount === 1;
    });
  }
}
