/**
 * A small forward-only migration runner. Each migration set (the control-plane catalog, the
 * CA-DMS shard schema) is a folder of `NNN_description.sql` files applied in order, each in its
 * own transaction (READ COMMITTED, whatever the default level), and recorded in `catalog.schema_migrations` with a checksum so an edited,
 * already-applied file is caught rather than silently ignored. Concurrent runners (two deploys,
 * two local starts) wait for each other migration by migration: each migration's transaction
 * locks `catalog.schema_migrations` (SHARE ROW EXCLUSIVE, which conflicts with itself) and
 * applies the migration only if no other runner recorded it meanwhile. Not an advisory lock:
 * every login of the database (a shard's application login, say) may take those, and one that
 * held the runner's key kept every deploy waiting; the table is the migrations login's alone
 * (test/integration/controller/least-privilege.test.ts, "an application login's locks").
 * Its own statements name pg_catalog's functions with arguments of their exact types, so that an
 * overload an application login created in the public schema (PostgreSQL 14) never runs as the
 * migrations login; the migrations' own unqualified calls are guarded by refusing to apply (or
 * commit) a migration while such overloads exist (see `refuseForeignRoutines`).
 *
 * A migration's statements wait at most `lockTimeoutMs` for each lock (`lock_timeout`). An
 * `alter table` needs an ACCESS EXCLUSIVE lock; waiting for it behind one long or
 * idle-in-transaction session that read the table, it would queue every later statement on that
 * table (every write of the services) behind itself for as long as that session lives. Given up
 * instead, the migration is rolled back, and retried after a pause, a bounded number of times;
 * then it fails naming the sessions that held locks on the tables it names.
 *
 * @example
 * ```ts
 * await runMigrations(pool, 'catalog', catalogMigrationsDir);
 * ```
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { LOCK_NOT_AVAILABLE } from './sqlstate.js';
import { inClientTransaction } from './transaction.js';

export class MigrationError extends Error {
  override readonly name: string = 'MigrationError';
}

/**
 * The database records a migration of the set past the last one this version has: a newer
 * version migrated it. Nothing is applied; run that version (or start from fresh data).
 */
export class MigrationNewerError extends MigrationError {
  override readonly name = 'MigrationNewerError';
}

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
  readonly checksum: string;
}

export interface MigrationResult {
  readonly set: string;
  readonly applied: readonly string[];
  readonly alreadyApplied: number;
}

/** Options of {@link runMigrations}. */
export interface RunMigrationsOptions {
  /**
   * How long one statement of a migration waits for a lock before giving up (`lock_timeout`):
   * also how long other sessions' statements on the table can queue behind its wait.
   * @default 5000
   */
  readonly lockTimeoutMs?: number;
  /**
   * Attempts at a migration whose statement gave up waiting for a lock (SQLSTATE 55P03); also
   * bounds the immediate retries of one that missed a role another database's migration created
   * meanwhile. @default 5
   */
  readonly lockAttempts?: number;
  /**
   * Pause between those attempts (the defaults: 5 waits of 5 s and 4 pauses of 10 s, about a
   * minute, before the migration fails). @default 10000
   */
  readonly retryPauseMs?: number;
  /** Hears of each attempt given up on a lock before the pause and the next attempt. @default - none */
  readonly onLockRetry?: (event: LockRetryEvent) => void | Promise<void>;
}

/** One attempt at a migration given up on a lock wait, with another to come. */
export interface LockRetryEvent {
  readonly set: string;
  readonly migration: string;
  /** 1-based: the attempt that gave up. */
  readonly attempt: number;
  readonly attempts: number;
  /** The sessions holding locks on tables the migration names, as found after the rollback. */
  readonly blockers: readonly LockHolder[];
}

/** A session holding locks on tables a migration names (pg_locks, pg_stat_activity). */
export interface LockHolder {
  readonly pid: number;
  /** `idle in transaction`, `active`, ...; null when this login may not see the session's state. */
  readonly state: string | null;
  /** Seconds since the session's transaction started; null when unknown. */
  readonly transactionSeconds: number | null;
  /** `schema.table mode`, for each lock it holds on a table the migration names. */
  readonly locks: readonly string[];
}

export const DEFAULT_LOCK_TIMEOUT_MS = 5000;
export const DEFAULT_LOCK_ATTEMPTS = 5;
export const DEFAULT_RETRY_PAUSE_MS = 10_000;
/** SQLSTATE 40P01: the migration was chosen to break a deadlock, and rolled back. */
const DEADLOCK_DETECTED = '40P01';

const FILE = /^(\d{3,})_([a-z0-9_]+)\.sql$/;

/** Reads a migration folder, checking names and that versions are unique and contiguous. */
export async function loadMigrations(dir: string): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const m = FILE.exec(file);
    if (!m) throw new MigrationError(`migration file ${file} does not match NNN_name.sql`);
    const sql = await readFile(join(dir, file), 'utf8');
    migrations.push({
      version: Number(m[1]),
      name: file,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  migrations.forEach((mig, i) => {
    if (mig.version !== i + 1) throw new MigrationError(`migration ${mig.name} should be version ${i + 1}: versions are contiguous from 1`);
  });
  return migrations;
}

/**
 * Applies the pending migrations of `set` from `dir`. Returns what was applied.
 * Throws {@link MigrationError} when an applied migration's file changed or disappeared, when a
 * migration fails, and when one still finds a table locked after its last attempt.
 */
export async function runMigrations(pool: pg.Pool, set: string, dir: string, options: RunMigrationsOptions = {}): Promise<MigrationResult> {
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  const attempts = options.lockAttempts ?? DEFAULT_LOCK_ATTEMPTS;
  const pauseMs = options.retryPauseMs ?? DEFAULT_RETRY_PAUSE_MS;
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 1) throw new MigrationError(`lockTimeoutMs must be a positive integer (got ${lockTimeoutMs})`);
  if (!Number.isInteger(attempts) || attempts < 1) throw new MigrationError(`lockAttempts must be a positive integer (got ${attempts})`);
  if (!Number.isFinite(pauseMs) || pauseMs < 0) throw new MigrationError(`retryPauseMs must be 0 or more (got ${pauseMs})`);
  const migrations = await loadMigrations(dir);
  const client = await pool.connect();
  try {
    await createRecord(client);
    const { rows } = await client.query<{ version: number; name: string; checksum: string }>(
      'select version, name, checksum from catalog.schema_migrations where set_name = $1 order by version',
      [set],
    );
    const newest = rows.at(-1);
    if (newest !== undefined && newest.version > migrations.length) {
      throw new MigrationNewerError(
        `${set}: the database was migrated by a newer version: it records migration ${newest.name}, and this version's ${set} migrations end at ${migrations.at(-1)?.name ?? 'none'}`,
      );
    }
    for (const row of rows) {
      const file = migrations[row.version - 1];
      if (!file) throw new MigrationError(`${set}: applied migration ${row.name} is missing from ${dir}`);
      if (file.checksum !== row.checksum) throw new MigrationError(`${set}: applied migration ${row.name} was edited after it ran; add a new migration instead`);
    }
    const applied: string[] = [];
    let alreadyApplied = rows.length;
    for (const mig of migrations.slice(rows.length)) {
      const roleNames = roleNamesIn(mig.sql);
      for (let attempt = 1; ; attempt++) {
        // The roles the migration names that did not exist when this attempt began (see createdMeanwhile).
        let absentRoles: readonly string[] = [];
        try {
          // READ COMMITTED whatever the login's or the database's default_transaction_isolation (an
          // RDS parameter group may make it SERIALIZABLE): the migrations are written for it (they
          // lock, then read what committed before the lock). At SERIALIZABLE, sharding migration
          // 021 (which reads every slot map, then inserts the shards they name) and a slot move's
          // flip committed meanwhile (which looked in that table for its own new shard) were each
          // other's read/write conflict: the migration failed with 40001 after its whole read, at
          // every deploy during which a move flipped (by-hand-cost-equivalence.test.ts).
          const ran = await inClientTransaction(client, 'begin isolation level read committed', async () => {
            // A migration may run long (an index on a big table); the role's default statement
            // timeout (catalog migration 005) is for the functions' queries. Its lock waits are
            // bounded, though (see the module comment). Transaction-scoped, so neither outlives
            // the migration nor sets session state.
            await client.query('set local statement_timeout = 0');
            // Waits (unbounded, as for the advisory lock before) for another runner's migration.
            await client.query('lock table catalog.schema_migrations in share row exclusive mode');
            const done = await client.query<{ checksum: string }>('select checksum from catalog.schema_migrations where set_name = $1::text and version = $2::integer', [set, mig.version]);
            const other = done.rows[0];
            if (other !== undefined) {
              if (other.checksum !== mig.checksum) throw new MigrationError(`${set}: migration ${mig.name} was applied by another runner with other contents; add a new migration instead`);
              return false;
            }
            // The schemas its own `set local search_path` (or set_config) may put on the path: its
            // statements after that resolve there, and a rollback does not undo all an overload may
            // do as this login (write a server file, run a program, talk to another database).
            const named = await schemasNamedIn(client, mig.sql);
            await refuseForeignRoutines(client, set, mig.name, 'before it ran', named);
            await client.query("select pg_catalog.set_config('lock_timeout'::text, $1::text, true)", [`${lockTimeoutMs}ms`]);
            const xact = await client.query<{ id: string }>('select pg_catalog.txid_current()::pg_catalog.text as id');
            absentRoles = await rolesAbsent(client, roleNames);
            await client.query(mig.sql);
            // A COMMIT or ROLLBACK in the file (a `begin; ... commit;` wrapper, say) ends this
            // transaction: what came before it is committed without its record, the lock on the
            // record is released to the next runner, and the rest runs outside any transaction.
            const still = await client.query<{ id: string | null }>('select pg_catalog.txid_current_if_assigned()::pg_catalog.text as id');
            if (still.rows[0]?.id !== xact.rows[0]?.id) {
              throw new MigrationError(
                `${set}: migration ${mig.name} ended the runner's transaction (a COMMIT, ROLLBACK or END in the file): not recorded, though what it ran before that may be committed. ` +
                  'Each migration runs in a transaction of its own: remove its transaction statements, check what of it is in the database, then run the migrations again.',
              );
            }
            // One created meanwhile (after the check above) may have run as this login: what it did
            // in the database is rolled back with the migration.
            await refuseForeignRoutines(client, set, mig.name, 'while it ran, so it was rolled back', named);
            await client.query('insert into catalog.schema_migrations (set_name, version, name, checksum) values ($1, $2, $3, $4)', [
              set,
              mig.version,
              mig.name,
              mig.checksum,
            ]);
            return true;
          });
          if (ran) applied.push(mig.name);
          else alreadyApplied++;
          break;
        } catch (err) {
          // A deadlock is a lock wait too: the migration lost it (its locks met a writer taking the
          // same tables in the other order) and was rolled back; the writer went on. Tried again
          // like a lock timeout.
          if (err instanceof MigrationError) throw err;
          const code = (err as { code?: unknown }).code;
          if (attempt < attempts && (await createdMeanwhile(client, err, absentRoles))) continue;
          if (code !== LOCK_NOT_AVAILABLE && code !== DEADLOCK_DETECTED) {
            throw new MigrationError(`${set}: migration ${mig.name} failed: ${(err as Error).message}`, { cause: err });
          }
          // Rolled back already (inClientTransaction): nothing of the migration holds or waits.
          const blockers = await lockHolders(client, mig.sql);
          if (attempt >= attempts) {
            throw new MigrationError(
              `${set}: migration ${mig.name} failed, not applied: in ${attempts === 1 ? 'its one attempt' : `each of ${attempts} attempts`} it waited more than ${lockTimeoutMs} ms for a lock and gave up (or lost a deadlock), ` +
                `because another session held a lock on a table it changes (${describeHolders(blockers)}). ` +
                'End or wait out that session (see pg_stat_activity and pg_locks), then run the migrations again.',
              { cause: err },
            );
          }
          await options.onLockRetry?.({ set, migration: mig.name, attempt, attempts, blockers });
          await new Promise((resolve) => setTimeout(resolve, pauseMs));
        }
      }
    }
    return { set, applied, alreadyApplied };
  } finally {
    client.release();
  }
}

/** SQLSTATE undefined_object: what a statement naming a role that does not exist fails with (among other objects). */
const UNDEFINED_OBJECT = '42704';

/**
 * True when the migration failed on a role that exists now: another database's migration on the
 * same server created it while this one ran. Roles belong to the server, and the migrations create
 * theirs tolerantly (`create role` catching duplicate_object and unique_violation), but the
 * tolerance is not enough: when the other session commits the role between this `create role`'s
 * lookup (none) and its insert (unique_violation, caught), this session's catalog cache still
 * holds the role as absent, so the migration's next grant to it fails with undefined_object
 * (sharding migration 004 when two catalogs of one server were migrated at once: 2 runs in 40).
 * Not an advisory lock around role creation: those belong to one database, not to the server. The
 * migration was rolled back; its next attempt, in a new transaction, sees the role.
 *
 * Recognised by the SQLSTATE and pg_roles, not by the message, which the server writes in its
 * `lc_messages` language: the error names the role only in that text, so the candidates are the
 * roles the migration's own text names ({@link roleNamesIn}) that were absent when the attempt
 * began (`absentBefore`) and exist now. A migration that failed on another missing object while a
 * role it names appeared is tried once more, and then fails with that object's error.
 */
async function createdMeanwhile(client: pg.PoolClient, err: unknown, absentBefore: readonly string[]): Promise<boolean> {
  if ((err as { code?: unknown }).code !== UNDEFINED_OBJECT || absentBefore.length === 0) return false;
  return (await rolesAbsent(client, absentBefore)).length < absentBefore.length;
}

/**
 * The names a migration's text may give a role: each word, folded to lower case as PostgreSQL
 * folds an unquoted identifier (also inside strings and function bodies: `create role x` in a DO
 * block), and each double-quoted identifier as written. Keywords and table names among them are
 * harmless: only those pg_roles holds (or comes to hold) count.
 */
function roleNamesIn(sql: string): string[] {
  const names = new Set<string>();
  for (const m of sql.matchAll(/"((?:[^"]|"")+)"|[\p{L}_][\p{L}\p{N}_$]*/gu)) {
    const name = m[1] === undefined ? m[0].toLowerCase() : m[1].replaceAll('""', '"');
    // NAMEDATALEN: a longer name is no role's.
    if (Buffer.byteLength(name) <= 63) names.add(name);
  }
  return [...names];
}

/** Those of `names` that no role of the server has (pg_roles read now, not this session's cache). */
async function rolesAbsent(client: pg.PoolClient, names: readonly string[]): Promise<string[]> {
  if (names.length === 0) return [];
  const { rows } = await client.query<{ name: string }>(
    `select u.name from pg_catalog.unnest($1::pg_catalog.text[]) as u(name)
      where not exists (select from pg_catalog.pg_roles r where r.rolname operator(pg_catalog.=) u.name)`,
    [names],
  );
  return rows.map((r) => r.name);
}

/**
 * Refuses (MigrationError) to run a migration, or to commit it, while a schema on this session's
 * search_path other than pg_catalog (or one of `alsoSchemas`, those the migration names) holds a
 * function, procedure, aggregate or operator owned by a login that is neither this one, one that
 * may SET ROLE to this one, a superuser, nor the database's owner holding at least this login's
 * attributes and roles. The migrations name their functions
 * unqualified (`format(...)` in catalog 005 and shard 013, `to_regprocedure(...)`, ...), and an
 * overload in `public` whose argument types match such a call exactly is preferred over
 * pg_catalog's variadic, polymorphic or implicitly cast one (CVE-2018-1058's pattern): where
 * PUBLIC may create in `public` (PostgreSQL 14, a shard where migration 019 could not revoke it),
 * the application login's overload would run with the migrations login's rights (on RDS the
 * master user) on the deploy that applies a migration after it was created. Applied migrations
 * cannot be edited, and the search_path cannot hide `public`'s functions without hiding the
 * shard's tables, so the runner checks instead: a deploy stops, naming them, rather than run them.
 */
async function refuseForeignRoutines(client: pg.PoolClient, set: string, migration: string, when: string, alsoSchemas: readonly string[]): Promise<void> {
  const { rows } = await client.query<{ what: string; owner: string; owns_database: boolean }>(
    `with become as (
       -- The mode of pg_has_role that means "may SET ROLE to": SET from PostgreSQL 16 on.
       select case when pg_catalog.current_setting('server_version_num'::pg_catalog.text)::pg_catalog.int4 operator(pg_catalog.>=) 160000
         then 'SET' else 'MEMBER' end::pg_catalog.text as become),
     found as materialized (
       select x.what, x.owner
         from (select p.oid::pg_catalog.regprocedure::pg_catalog.text as what, p.pronamespace as nsp, p.proowner as owner
                 from pg_catalog.pg_proc p
               union all
               select 'operator ' operator(pg_catalog.||) o.oid::pg_catalog.regoperator::pg_catalog.text, o.oprnamespace, o.oprowner
                 from pg_catalog.pg_operator o) x
         join pg_catalog.pg_namespace n on n.oid operator(pg_catalog.=) x.nsp
        where (n.nspname operator(pg_catalog.=) any (pg_catalog.current_schemas(false)) or n.nspname operator(pg_catalog.=) any ($1::pg_catalog.name[]))
          and n.nspname operator(pg_catalog.<>) 'pg_catalog'::pg_catalog.name),
     -- The roles this login is a member of, once: what the database's owner must hold too.
     mine as materialized (
       select g.oid from pg_catalog.pg_roles g
        where g.rolname operator(pg_catalog.<>) current_user
          and pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER'::pg_catalog.text)),
     -- Whether an owner is trusted is decided once per owner (in the select list, which is not
     -- pushed down to every role), not once per function: with some thousand roles and an
     -- extension's functions in public it took minutes per migration.
     owners as materialized (
       select r.oid, r.rolname::pg_catalog.text as owner,
              r.oid operator(pg_catalog.=) (select d.datdba from pg_catalog.pg_database d where d.datname operator(pg_catalog.=) pg_catalog.current_database()) as owns_database,
            r.rolsuper
            or r.rolname operator(pg_catalog.=) current_user
            -- A role that already holds this login's rights gains nothing by running as it. Holds
            -- them: may SET ROLE to this login. Inheriting its privileges (USAGE) is not that:
            -- attributes (SUPERUSER, CREATEROLE, CREATEDB, BYPASSRLS, REPLICATION) are never
            -- inherited, and a grant WITH INHERIT TRUE, SET FALSE (PostgreSQL 16) gives the
            -- privileges without them. Nor is membership alone from 16 on (WITH INHERIT FALSE, SET
            -- FALSE, as a CREATEROLE login's grants to itself are); before 16 a member may always
            -- SET ROLE. Nor does one holding ADMIN OPTION on this login (RDS's master user on a login
            -- it created, PostgreSQL 16 on): it may grant this login to itself, then SET ROLE to it.
            or pg_catalog.pg_has_role(r.oid, current_user, b.become)
            or pg_catalog.pg_has_role(r.oid, current_user, 'MEMBER WITH ADMIN OPTION'::pg_catalog.text)
            -- Nor does the database's owner (the master user that created it, which ran the earlier
            -- migrations: an operator's own admin login may run them now), but only when it already
            -- has what this login has beyond its own objects: never when this login is a superuser
            -- (the owner is not: superusers were let through above), else each attribute this login
            -- has, and each role this login may use (USAGE), become (SET) or grant (ADMIN) the same
            -- way, or may grant itself (ADMIN OPTION: a role the master user created, PostgreSQL 16
            -- on). An ordinary owner of a database a superuser migrates would otherwise run its
            -- overloads as a superuser.
            or (
              r.oid operator(pg_catalog.=) (select d.datdba from pg_catalog.pg_database d where d.datname operator(pg_catalog.=) pg_catalog.current_database())
              and (select not me.rolsuper
                      and (r.rolcreaterole or not me.rolcreaterole)
                      and (r.rolcreatedb or not me.rolcreatedb)
                      and (r.rolbypassrls or not me.rolbypassrls)
                      and (r.rolreplication or not me.rolreplication)
                     from pg_catalog.pg_roles me where me.rolname operator(pg_catalog.=) current_user)
              and not exists (
                select from mine g
                 where g.oid operator(pg_catalog.<>) r.oid
                   and not pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER WITH ADMIN OPTION'::pg_catalog.text)
                   and ((pg_catalog.pg_has_role(current_user, g.oid, b.become) and not pg_catalog.pg_has_role(r.oid, g.oid, b.become))
                     or (pg_catalog.pg_has_role(current_user, g.oid, 'USAGE'::pg_catalog.text)
                         and not pg_catalog.pg_has_role(r.oid, g.oid, 'USAGE'::pg_catalog.text) and not pg_catalog.pg_has_role(r.oid, g.oid, b.become))
                     or pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER WITH ADMIN OPTION'::pg_catalog.text)))) as trusted
         from (select distinct f.owner from found f) o
         join pg_catalog.pg_roles r on r.oid operator(pg_catalog.=) o.owner
         cross join become b)
     select f.what, w.owner, w.owns_database
       from found f
       join owners w on w.oid operator(pg_catalog.=) f.owner
      where not w.trusted
      order by 1
      limit 21`,
    [alsoSchemas],
  );
  if (rows.length === 0) return;
  const shown = rows.slice(0, 20).map((r) => `${r.what} owned by ${r.owner}`);
  const more = rows.length > 20 ? ', and more' : '';
  const owner = rows.find((r) => r.owns_database)?.owner;
  const ownerHint =
    owner === undefined
      ? ''
      : ` The database's owner ${owner} is among them: an owner is trusted only when it has every attribute and role this login has, and it lacks some ` +
        `(its functions would run with more rights than its own). Run the migrations as ${owner} (or a login with no more rights than it), or drop its functions.`;
  throw new MigrationError(
    `${set}: migration ${migration} not applied: a schema on the migrations' search_path (or one the migration names, which its own search_path may put there) holds functions or operators of another login, ` +
      `which an unqualified call of a migration would run with this login's rights (found ${when}): ${shown.join('; ')}${more}. ` +
      'Drop them (or move them to a schema neither on the search_path nor named by a migration), revoke CREATE on that schema from PUBLIC, then run the migrations again.' +
      ownerHint,
  );
}

/**
 * The schemas of this database (other than the system's) that `sql` may put on its search_path:
 * those whose name (case-insensitively, quoted or not) a setting of it holds, from each mention of
 * `search_path` (`set local search_path = ...`, `set_config('search_path', ...)`, a function's
 * `set search_path = ...`) or each `set [local] schema` to the end of that statement. That is where
 * a migration's later statements may resolve, which {@link refuseForeignRoutines} must check before
 * any of them runs. A name mentioned anywhere else (a table, a role, a word of a comment: `api`,
 * `monitoring`, `extensions` are common schema names) changes no search_path, and another login's
 * functions there must not stop a deploy. A name the file builds at run time is not found here;
 * the check after the migration (which sees the search_path it left) still rolls such a migration
 * back. `$user` in a setting counts as this login's own schema.
 */
async function schemasNamedIn(client: pg.PoolClient, sql: string): Promise<string[]> {
  const settings = searchPathSettings(sql.toLowerCase());
  if (settings.length === 0) return [];
  const { rows } = await client.query<{ nspname: string; me: string }>(
    `select n.nspname::pg_catalog.text as nspname, current_user::pg_catalog.text as me
       from pg_catalog.pg_namespace n
      where n.nspname operator(pg_catalog.!~) '^pg_'::pg_catalog.text
        and n.nspname operator(pg_catalog.<>) 'information_schema'::pg_catalog.name`,
  );
  return rows
    .filter((r) => settings.some((setting) => namesWord(setting, r.nspname) || (setting.includes('$user') && r.nspname === r.me)))
    .map((r) => r.nspname);
}

/**
 * The parts of lower-cased `text` that may set a search_path: from each `search_path`, or each
 * `set [local | session] schema` (an alias of it), to the next `;` (the end of its statement, or
 * of a function body's statement) or the end of the text.
 */
function searchPathSettings(text: string): string[] {
  const parts: string[] = [];
  for (const m of text.matchAll(/search_path|\bset\s+(?:(?:local|session)\s+)?schema\b/g)) {
    const end = text.indexOf(';', m.index);
    parts.push(text.slice(m.index, end === -1 ? undefined : end));
  }
  return parts;
}

/**
 * SQLSTATEs of a `create ... if not exists` that lost a race with another runner's (catalog
 * rows): a unique index of the system catalogs, the schema or the table already there, or the
 * table's row type (42710, `type "schema_migrations" already exists`, which the full suite met).
 */
const CREATED_CONCURRENTLY = new Set(['23505', '42P06', '42P07', '42710']);

/**
 * The schema and table recording applied migrations. Two runners on a new database may both
 * create them at once: the loser's statement fails on the catalog's unique index, and is run
 * again, when it finds them.
 */
async function createRecord(client: pg.PoolClient): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await client.query(`create schema if not exists catalog`);
      await client.query(`create table if not exists catalog.schema_migrations (
        set_name text not null,
        version integer not null,
        name text not null,
        checksum text not null,
        applied_at timestamptz not null default now(),
        primary key (set_name, version))`);
      return;
    } catch (err) {
      if (attempt >= 3 || !CREATED_CONCURRENTLY.has(String((err as { code?: unknown }).code))) throw err;
    }
  }
}

/**
 * The other sessions of this database holding locks on tables `sql` names (a whole-word,
 * case-insensitive match of the table's name): the likely blockers of a migration that gave up
 * waiting. Best effort, and cheap (one query, after the rollback): a failure yields none.
 */
async function lockHolders(client: pg.PoolClient, sql: string): Promise<LockHolder[]> {
  try {
    const { rows } = await client.query<{ pid: number; state: string | null; xact_seconds: number | null; nspname: string; relname: string; mode: string }>(
      `select l.pid, a.state, extract(epoch from now() - a.xact_start)::float8 as xact_seconds, n.nspname, c.relname, l.mode
         from pg_locks l
         join pg_class c on c.oid = l.relation
         join pg_namespace n on n.oid = c.relnamespace
         left join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'relation' and l.granted and l.pid <> pg_backend_pid()
          and l.database = (select oid from pg_database where datname = current_database())
          and n.nspname not in ('pg_catalog', 'information_schema')
        order by l.pid, n.nspname, c.relname
        limit 500`,
    );
    const text = sql.toLowerCase();
    const byPid = new Map<number, { state: string | null; transactionSeconds: number | null; locks: string[] }>();
    for (const row of rows.filter((r) => namesWord(text, r.relname))) {
      const holder = byPid.get(row.pid) ?? { state: row.state, transactionSeconds: row.xact_seconds === null ? null : Math.round(row.xact_seconds), locks: [] };
      holder.locks.push(`${row.nspname}.${row.relname} ${row.mode}`);
      byPid.set(row.pid, holder);
    }
    return [...byPid].map(([pid, h]) => ({ pid, ...h }));
  } catch {
    return [];
  }
}

/** Whether lower-cased `text` holds `name` as a whole word (an identifier, quoted or not). */
function namesWord(text: string, name: string): boolean {
  return new RegExp(`(^|[^a-z0-9_$])${name.toLowerCase().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}($|[^a-z0-9_$])`).test(text);
}

function describeHolders(holders: readonly LockHolder[]): string {
  if (holders.length === 0) return 'no session holds a lock on a table it names any more';
  const shown = holders.slice(0, 5).map((h) => {
    const state = h.state ?? 'state not visible to this login';
    const age = h.transactionSeconds === null ? '' : `, in a transaction for ${h.transactionSeconds} s`;
    return `pid ${h.pid} (${state}${age}) holding ${h.locks.join(', ')}`;
  });
  const more = holders.length > shown.length ? `, and ${holders.length - shown.length} more` : '';
  return `sessions holding locks on tables it names: ${shown.join('; ')}${more}`;
}
