/**
 * The routing each sharding runtime runs with, recorded in the catalog (`catalog.runtime_routings`,
 * sharding migration 022), and what `ca-dms-scaling shards fences` makes of it (issue #15,
 * docs/sharding-spec.md section 9, "Settling the rows a hand change left").
 *
 * The review judges a key's `directory` fence rows by the shard the key routes to, which depends on
 * the routing (strategy, `directory.override_hash`, fallback, enabled), and the shards do not
 * record it. Read from the operator's `SHARDING_CONFIG_JSON` alone, a shell whose document differed
 * from the deployed routers' (an old copy, another stage's) had rows settled by a route no router
 * takes. So every runtime ({@link recordRuntimeRouting}, called by `createShardingRuntime`: the
 * scaling API's function, the moves worker's, local mode) records its routing once as it is built,
 * and the review ({@link routingForReview}) uses the routings recorded recently where it is given
 * none, and refuses to settle where the one it is given differs from one of them.
 *
 * @example
 * ```ts
 * await recordRuntimeRouting(catalog, 'scaling-api', moveRoutingOf(config)); // once per cold start
 * const recorded = await recordedRoutings(catalog, DEFAULT_RECORDED_WITHIN_MS);
 * const { routing, conflict } = routingForReview(routingFromShell, recorded, DEFAULT_RECORDED_WITHIN_MS);
 * ```
 */
import type pg from 'pg';
import { z } from 'zod';
import { describeRouting, sameRouting, type MoveRouting } from '../../core/sharding/move-machine.js';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, retryingSerializationFailures } from './sqlstate.js';
import { sqlLiteral } from './write-transaction.js';

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/** SQLSTATE undefined_table: a catalog without sharding migration 022. */
const UNDEFINED_TABLE = '42P01';

/**
 * How recently a runtime must have recorded a routing for the review to count it (24 h). A record
 * is written when a runtime is built (a Lambda cold start), not at each request, so its `seen_at` is
 * when the oldest router that may still run with it started. Lambda replaces its execution
 * environments "every few hours" even under constant load (AWS does not publish a bound), and the
 * moves worker's schedule starts one every few hours at least: a routing no runtime was built with
 * for a day is no router's any more. A deploy replaces the functions' environments at once; an
 * operator who knows every runtime of an old routing is gone narrows the window
 * (`--recorded-within`).
 */
export const DEFAULT_RECORDED_WITHIN_MS = 24 * 3_600_000;

/**
 * How long a runtime's record may wait on a lock before it gives up (its `lock_timeout`, see
 * {@link recordRuntimeRouting}). The record sits in a cold start's path, and the API's first
 * request's deadline is taken before its runtime is built: a session holding the record's row (an
 * operator's open transaction on the table, a migration's lock) held each cold start for the
 * catalog role's statement timeout on AWS (10 s, catalog migration 005; of a 27 s request
 * deadline), and where the login has none, until that session ended. A second is far longer than
 * another cold start's own upsert holds the row (one autocommit statement), and the record is not
 * worth more: a runtime that could not record is told and starts all the same.
 */
export const RECORD_LOCK_WAIT_MS = 1_000;

/** The routing as the table holds it: the configuration's names, every field present (migration 022). */
const storedRouting = z
  .object({
    strategy: z.enum(['hash_based', 'range_based', 'directory_based']),
    override_hash: z.boolean(),
    fallback: z.enum(['hash', 'reject']),
    enabled: z.boolean(),
  })
  .strict();

/**
 * Records that a runtime of `actor` was built with `routing` now: the runtimes' row of that actor
 * and routing inserted or its `seen_at` moved, never an application login's row of the same actor
 * and routing (`by_application`, sharding migration 027): that row is the application's record,
 * and its `seen_at` says when the application last recorded. Before, the upsert's conflict on
 * (actor, routing) moved it and wrote no runtime's row (sharding migration 030 keys the rows by
 * side; runtime-routings.test.ts, "a control runtime's record under a name and routing an
 * application login recorded first moves no application row"). The statement names no conflict
 * target and reads the side through the row's JSON, so that it runs on every catalog from
 * migration 022 on: before 030, where an application's row holds the actor and routing, nothing
 * is written and it throws, saying so (the runtime is told and starts). One simple query, its own implicit transaction (no session
 * state survives it: RDS Proxy multiplexes the functions' catalog connections), whose
 * `set local lock_timeout` bounds its wait on a lock to {@link RECORD_LOCK_WAIT_MS} (SQLSTATE
 * 55P03 past it); a simple query takes no parameters, so the actor and the routing go in as
 * literals (`sqlLiteral`). Sent again on 40001: at a login's or the database's default of
 * REPEATABLE READ, two cold starts of one actor and routing at once failed the second's
 * `on conflict` update once the first committed. Throws what the catalog answers (a catalog
 * without migration 022: 42P01; a held row: 55P03); the runtime reports it and starts all the same.
 */
export async function recordRuntimeRouting(catalog: Queryable, actor: string, routing: MoveRouting): Promise<void> {
  const stored: z.infer<typeof storedRouting> = { strategy: routing.strategy, override_hash: routing.overrideHash, fallback: routing.fallback, enabled: routing.enabled !== false };
  const actorLiteral = sqlLiteral(actor);
  if (actorLiteral === undefined) throw new Error(`the actor ${JSON.stringify(actor)} holds a NUL character, which PostgreSQL text cannot: its routing was not recorded`);
  // The routing's JSON is this function's own (enum values and booleans): no NUL.
  const routingLiteral = sqlLiteral(JSON.stringify(stored)) as string;
  const statement = (): Promise<number> =>
    retryingSerializationFailures(() =>
      catalog.query(
        `set local lock_timeout = ${RECORD_LOCK_WAIT_MS};
       with moved as (
         update catalog.runtime_routings r set seen_at = now()
          where r.actor = ${actorLiteral} and r.routing = ${routingLiteral}::jsonb
            and not coalesce((to_jsonb(r) ->> 'by_application')::boolean, false)
         returning 1),
       added as (
         insert into catalog.runtime_routings (actor, routing)
         select ${actorLiteral}, ${routingLiteral}::jsonb where not exists (select 1 from moved)
         on conflict do nothing
         returning 1)
       select (select count(*) from moved) + (select count(*) from added) as written`,
      ),
    ).then((results) => {
      // Two statements: node-postgres answers with one result each.
      const last = (Array.isArray(results) ? results[results.length - 1] : results) as pg.QueryResult<{ written: string }> | undefined;
      return Number(last?.rows[0]?.written ?? 1);
    });
  // Nothing written is not yet an application's row holding the key: the update and the insert
  // read one snapshot, taken before another cold start of the same actor and routing committed its
  // row (READ COMMITTED, the default), so the update found no row and the insert, waiting on that
  // row, did nothing once it committed. Sent once more, the statement's new snapshot sees it and
  // moves its seen_at. Before, the second of two cold starts at once threw the message below, that
  // sharding migration 030 was not applied, on a catalog where it was (runtime-routings.test.ts,
  // "two cold starts of one actor and routing at once both record"). Nothing written twice is the
  // application's row of a catalog before 030: the other side's row, never this one's, stays put.
  if ((await statement()) === 0 && (await statement()) === 0) {
    throw new Error(
      `the routing of ${actor} was not recorded: an application login's record of the same name and routing holds its row, on a catalog whose runtime_routings still has one row per actor and routing (sharding migration 030 not applied: ca-dms-scaling migrate); that record was left as it was`,
    );
  }
}

/** A routing a runtime recorded, as the review read it. */
export interface RecordedRouting {
  readonly actor: string;
  /** Undefined where the row is not a routing this version reads (then `raw` says what it holds). */
  readonly routing: MoveRouting | undefined;
  readonly raw: string;
  readonly firstSeenAt: Date;
  /** The last time a runtime of `actor` was built with it, by the catalog's clock. */
  readonly seenAt: Date;
  /** Milliseconds from `seenAt` to the catalog's now. */
  readonly ageMs: number;
  /**
   * Whether a runtime of the same actor was built with another routing since `seenAt` (its record
   * of that routing is newer): every runtime of the actor built since runs with another routing.
   * Not that every runtime built before has stopped (an old one may still serve: a rolling or a
   * canary deploy, a warm Lambda environment until it is replaced), which no record can tell: the
   * record still counts unless the operator, who knows the deploy, says so (`--ignore-superseded`).
   * Only a record written by the same side supersedes it ({@link RecordedRouting.byApplication}):
   * an application login's record of a control runtime's name never supersedes the runtime's.
   */
  readonly superseded: boolean;
  /**
   * Whether an application login wrote it, through `catalog.record_runtime_routing` (sharding
   * migration 027), rather than a control-plane runtime (or the catalog's owner); false on a
   * catalog before 027. Such a login may write any name of its own choosing, so its records are
   * named as its own, and supersede only its own (it may not record a runtime's name: 42501).
   */
  readonly byApplication: boolean;
}

/** The catalog's routings could not be read (a login without SELECT on the table). */
export class RecordedRoutingsError extends Error {
  override readonly name = 'RecordedRoutingsError';
}

/**
 * The routings runtimes recorded within `withinMs` of the catalog's now (its clock, not this
 * machine's), newest first; undefined where the catalog has no `catalog.runtime_routings` (sharding
 * migration 022 not applied yet).
 */
export async function recordedRoutings(catalog: Queryable, withinMs: number): Promise<readonly RecordedRouting[] | undefined> {
  let rows: Array<{ actor: string; routing: unknown; first_seen_at: Date; seen_at: Date; age_ms: number; by_application: boolean }>;
  try {
    // `by_application` read through the row's JSON: a catalog before sharding migration 027 has no
    // such column (every record then reads as a runtime's), and this version reviews it all the same.
    ({ rows } = await catalog.query(
      `select actor, routing, first_seen_at, seen_at, (extract(epoch from (now() - seen_at)) * 1000)::float8 as age_ms,
              coalesce((to_jsonb(r) ->> 'by_application')::boolean, false) as by_application
         from catalog.runtime_routings r
        where seen_at >= now() - make_interval(secs => $1::float8 / 1000)
        order by seen_at desc, actor`,
      [withinMs],
    ));
  } catch (err) {
    if (hasSqlState(err, UNDEFINED_TABLE)) return undefined;
    if (hasSqlState(err, INSUFFICIENT_PRIVILEGE)) {
      throw new RecordedRoutingsError("this catalog login may not read catalog.runtime_routings, the routings the runtimes recorded: use the control login (ca_dms_control) or the catalog's owner, after sharding migration 022 (ca-dms-scaling migrate)", { cause: err });
    }
    throw err;
  }
  // An actor's records on each side apart: an application login's call under a runtime's name
  // (one it took before any runtime recorded under it) must not make the runtime's true record
  // superseded, for --ignore-superseded to leave out (sharding migration 027).
  const side = (r: { actor: string; by_application: boolean }): string => `${r.by_application ? 'application' : 'runtime'}\u0000${r.actor}`;
  const latest = new Map<string, number>();
  for (const r of rows) latest.set(side(r), Math.max(latest.get(side(r)) ?? -Infinity, r.seen_at.getTime()));
  return rows.map((r) => {
    const parsed = storedRouting.safeParse(r.routing);
    return {
      actor: r.actor,
      routing: parsed.success
        ? {
            strategy: parsed.data.strategy,
            overrideHash: parsed.data.override_hash,
            fallback: parsed.data.fallback,
            enabled: parsed.data.enabled,
            ...(parsed.data.enabled ? {} : { disabledBy: `"enabled": false in the routing ${r.actor} recorded in catalog.runtime_routings, last built with it ${r.seen_at.toISOString()}` }),
          }
        : undefined,
      raw: JSON.stringify(r.routing),
      firstSeenAt: r.first_seen_at,
      seenAt: r.seen_at,
      ageMs: Math.max(0, Math.round(r.age_ms)),
      superseded: r.seen_at.getTime() < (latest.get(side(r)) ?? -Infinity),
      byApplication: r.by_application,
    };
  });
}

/** How the review judges a key's route, and what it says of it. */
export interface ReviewRouting {
  /** The routing a key's `directory` rows are judged by; undefined: they are left to the operator. */
  readonly routing: MoveRouting | undefined;
  /** Where it came from. */
  readonly from: 'SHARDING_CONFIG_JSON' | 'recorded' | undefined;
  /** What the review says of the routing, on its own line. */
  readonly note: string;
  /** Set where the routing given differs from one a runtime recorded recently: `--settle` is refused with it. */
  readonly conflict?: string;
  /** Set where `routing` is undefined: why, as each key's row left to the operator says. */
  readonly unknown?: string;
}

function hours(ms: number): string {
  return ms % 3_600_000 === 0 ? `${ms / 3_600_000} h` : `${Math.round(ms / 1000)} s`;
}

function age(ms: number): string {
  const s = Math.round(ms / 1000);
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

/** The records grouped by routing (unreadable rows each a group of their own), newest first. */
function byRouting(recorded: readonly RecordedRouting[]): Array<{ routing: MoveRouting | undefined; text: string; records: RecordedRouting[] }> {
  const groups: Array<{ routing: MoveRouting | undefined; text: string; records: RecordedRouting[] }> = [];
  for (const r of recorded) {
    const r0 = r.routing;
    const group = r0 === undefined ? undefined : groups.find((g) => g.routing !== undefined && sameRouting(g.routing, r0));
    if (group !== undefined) group.records.push(r);
    else groups.push({ routing: r0, text: r0 === undefined ? `a routing this version cannot read (${r.raw})` : describeRouting(r0), records: [r] });
  }
  return groups;
}

/**
 * How many records of one routing the review names ({@link whoRecorded}); the rest are counted. The
 * runtimes' records are a few (their actors times the routings they ran with), but an application
 * login adds a row with each name it records under (sharding migration 026): 20,000 calls made GET
 * /shards/fences's `otherRoutings` about 3 MB, past a Lambda's response limit with a few more.
 */
export const RECORDS_NAMED_PER_ROUTING = 10;

/**
 * `scaling-api (last built with it 2026-12-07T12:00:00.000Z, 35 min ago)`, each record of a group:
 * the runtimes' records first, then the application logins', newest first on each side, at most
 * {@link RECORDS_NAMED_PER_ROUTING}, the rest counted.
 */
function whoRecorded(all: readonly RecordedRouting[]): string {
  const ordered = [...all.filter((r) => !r.byApplication), ...all.filter((r) => r.byApplication)];
  const named = ordered.slice(0, RECORDS_NAMED_PER_ROUTING);
  const rest = ordered.slice(RECORDS_NAMED_PER_ROUTING);
  const restByApplication = rest.filter((r) => r.byApplication).length;
  const counted =
    rest.length === 0
      ? ''
      : `, and ${rest.length.toLocaleString('en-US')} more records of it (${restByApplication.toLocaleString('en-US')} by application logins; catalog.runtime_routings holds them all)`;
  return `${named
    .map((r) => {
      const by = r.byApplication ? 'recorded by an application login through catalog.record_runtime_routing, ' : '';
      return `${r.actor} (${by}last built with it ${r.seenAt.toISOString()}, ${age(r.ageMs)}${r.superseded ? `, superseded: ${r.actor} was built with another routing since` : ''})`;
    })
    .join(', ')}${counted}`;
}

/** What a refusal says where every record it names is superseded (`--ignore-superseded`), or ''. */
function supersededHint(records: readonly RecordedRouting[]): string {
  return records.length > 0 && records.every((r) => r.superseded)
    ? ' Every runtime of each actor built since runs with another routing: once every runtime built before has stopped (a deploy replaced them), --ignore-superseded leaves those records out.'
    : '';
}

/**
 * What the listing's texts (GET /shards/fences's `otherRoutings`, the `routing:` line of `shards
 * fences` where SHARDING_CONFIG_JSON differs) say of the superseded among `records`, the records of
 * other routings than the one judged by, or '': every one superseded, that `--ignore-superseded`
 * leaves them out once the runtimes built before have stopped; some, how many, and that the others
 * still count. Before, only --settle's refusal named the flag ({@link supersededHint}), and an
 * operator reading the listing after a deploy was told the routings disagree with no word of the
 * way out the review has for exactly that.
 */
function supersededRemark(records: readonly RecordedRouting[], where: 'api' | 'note'): string {
  const superseded = records.filter((r) => r.superseded).length;
  if (superseded === 0) return '';
  if (superseded === records.length) {
    return `${where === 'api' ? 'Every' : 'every'} record of another routing is superseded (its actor was built with another routing since): once every runtime built before has stopped (a deploy replaced them), ${where === 'api' ? 'ca-dms-scaling shards fences ' : ''}--ignore-superseded leaves those records out`;
  }
  const rest = records.length - superseded;
  return `${superseded.toLocaleString('en-US')} of those ${records.length.toLocaleString('en-US')} records ${superseded === 1 ? 'is' : 'are'} superseded (its actor was built with another routing since): --ignore-superseded leaves ${superseded === 1 ? 'it' : 'them'} out once every runtime built before has stopped; the other${rest === 1 ? '' : ` ${rest.toLocaleString('en-US')}`} still count${rest === 1 ? 's' : ''}`;
}

/** How the review counts the records. */
export interface ReviewRoutingOptions {
  /**
   * Leaves out the records their actor has since superseded ({@link RecordedRouting.superseded}):
   * the operator says every runtime built before the actor's newer routing has stopped (`shards
   * fences --ignore-superseded`). A record no newer one of its actor supersedes still counts.
   */
  readonly ignoreSuperseded?: boolean;
}

/**
 * The routing the review judges a key's rows by, from the one the operator gave (`given`, from
 * `SHARDING_CONFIG_JSON`; undefined: none) and the ones runtimes recorded within `withinMs`
 * (`recorded`; undefined: the catalog has no table for them):
 * - given, and every recent record the same: given (the routers' own);
 * - given, and a recent record differs: given for a listing, and {@link ReviewRouting.conflict}
 *   for `--settle`, which is refused naming both and who recorded it. Judged by a routing some
 *   router does not use, a key's row could be reopened where that router does not send the key,
 *   or set `moved` to where it does not look;
 * - none given, and every recent record the same: the recorded one (the operator need not copy the
 *   deployed document);
 * - none given, and the records differ (a change of the routing whose old runtimes may still run),
 *   or none recorded: none, the key's rows left to the operator, saying why;
 * - given, and no record (none recent, or no table): given, as before migration 022, saying the
 *   review could not check it.
 * An unreadable record differs from every routing. With `options.ignoreSuperseded`, the records
 * their actor has since superseded are left out first (the note names them).
 */
export function routingForReview(given: MoveRouting | undefined, everyRecord: readonly RecordedRouting[] | undefined, withinMs: number, options: ReviewRoutingOptions = {}): ReviewRouting {
  const window = `within the last ${hours(withinMs)}`;
  const leftOut = options.ignoreSuperseded === true ? (everyRecord ?? []).filter((r) => r.superseded) : [];
  const recorded = everyRecord?.filter((r) => !leftOut.includes(r));
  const leftOutNote = leftOut.length === 0 ? '' : `; left out (--ignore-superseded): ${byRouting(leftOut).map((g) => `${g.text}, recorded by ${whoRecorded(g.records)}`).join('; ')}`;
  const decided = decide(given, recorded, window);
  return leftOutNote === '' ? decided : { ...decided, note: `${decided.note}${leftOutNote}` };
}

function decide(given: MoveRouting | undefined, recorded: readonly RecordedRouting[] | undefined, window: string): ReviewRouting {
  if (recorded === undefined) {
    const missing = 'the catalog has no catalog.runtime_routings (sharding migration 022 not applied: ca-dms-scaling migrate), where the runtimes record the routing their routers use';
    if (given !== undefined) return { routing: given, from: 'SHARDING_CONFIG_JSON', note: `judged by SHARDING_CONFIG_JSON's routing, ${describeRouting(given)}, unchecked: ${missing}` };
    return { routing: undefined, from: undefined, note: `none: SHARDING_CONFIG_JSON is not set and ${missing}`, unknown: `the review was not given the sharding configuration, and ${missing}; where the key routes depends on it (whether pins override the hash: strategy and directory.override_hash): run it with SHARDING_CONFIG_JSON set (as the scaling API's function has it) or --local, or decide by hand` };
  }
  const groups = byRouting(recorded);
  if (given !== undefined) {
    const others = groups.filter((g) => g.routing === undefined || !sameRouting(g.routing, given));
    if (groups.length === 0) {
      return { routing: given, from: 'SHARDING_CONFIG_JSON', note: `judged by SHARDING_CONFIG_JSON's routing, ${describeRouting(given)}, unchecked: no runtime recorded its routing in catalog.runtime_routings ${window}` };
    }
    if (others.length === 0) {
      return { routing: given, from: 'SHARDING_CONFIG_JSON', note: `judged by SHARDING_CONFIG_JSON's routing, ${describeRouting(given)}, the one the runtimes recorded ${window}: ${whoRecorded(recorded)}` };
    }
    const differing = others.map((g) => `${g.text}, recorded by ${whoRecorded(g.records)}`).join('; ');
    const supersededNote = supersededRemark(others.flatMap((g) => g.records), 'note');
    const youngest = Math.floor(Math.min(...others.flatMap((g) => g.records.map((r) => r.ageMs))) / 1000);
    const fromRecords = groups.length === 1 ? ` Unset SHARDING_CONFIG_JSON to judge by the recorded routing, or set it as the routers have it.` : ` The runtimes recorded more than one routing ${window} (a change of the routing whose earlier runtimes may still run): settle once they agree.`;
    return {
      routing: given,
      from: 'SHARDING_CONFIG_JSON',
      note: `SHARDING_CONFIG_JSON gives ${describeRouting(given)}, but runtimes recorded another routing ${window}, the one their routers run with: ${differing}. The rows are listed as SHARDING_CONFIG_JSON's routing judges them; --settle is refused until the two agree${supersededNote === '' ? '' : `; ${supersededNote}`}`,
      conflict:
        `--settle refused: SHARDING_CONFIG_JSON gives ${describeRouting(given)}, but runtimes recorded another routing ${window}, the one their routers run with: ${differing}. Judged by a routing a router does not use, a key's directory row could be reopened where that router does not send the key, or set moved to where it does not look. Nothing was read from the shards or settled.` +
        `${fromRecords}${supersededHint(others.flatMap((g) => g.records))} ${
          youngest < 60
            ? `A runtime was built with it ${youngest} s ago: its routers most likely still run with it.`
            : `Where every runtime built with it has stopped since (a deploy replaces the functions' runtimes at once; the last was built ${youngest} s ago), --recorded-within SECONDS under ${youngest} leaves its records out.`
        } Without --settle the rows are listed.`,
    };
  }
  if (groups.length === 0) {
    return {
      routing: undefined,
      from: undefined,
      note: `none: SHARDING_CONFIG_JSON is not set and no runtime recorded its routing in catalog.runtime_routings ${window}`,
      unknown: `the review was not given the sharding configuration and no runtime recorded its routing ${window}, and where the key routes depends on it (whether pins override the hash: strategy and directory.override_hash): run it with SHARDING_CONFIG_JSON set (as the scaling API's function has it) or --local, or decide by hand`,
    };
  }
  const [only] = groups;
  if (groups.length === 1 && only?.routing !== undefined) {
    return { routing: only.routing, from: 'recorded', note: `judged by the routing the runtimes recorded ${window}, ${describeRouting(only.routing)}: ${whoRecorded(only.records)}` };
  }
  const all = groups.map((g) => `${g.text}, recorded by ${whoRecorded(g.records)}`).join('; ');
  return {
    routing: undefined,
    from: undefined,
    note: `none: SHARDING_CONFIG_JSON is not set, and the runtimes recorded ${groups.length > 1 ? 'different routings' : 'a routing this version cannot read'} ${window}: ${all}`,
    unknown: `the runtimes recorded ${groups.length > 1 ? 'different routings' : 'a routing this version cannot read'} ${window} (${groups.map((g) => g.text).join('; ')}), and where the key routes depends on which its routers use: once every runtime of the routing no longer deployed has stopped, --ignore-superseded leaves out the records whose actor was built with another routing since, and --recorded-within SECONDS under the age of its last record leaves it out; or decide by hand`,
  };
}

/**
 * What GET /shards/fences says beside its listing where a runtime recorded, within
 * {@link DEFAULT_RECORDED_WITHIN_MS}, a routing other than `own` (the API's runtime's): the
 * listing judges a key's `directory` rows (their `route` and `action`) by its own runtime's routing
 * alone, and `shards fences --settle` judges by neither while the records disagree (it leaves the
 * keys' rows to the operator, or refuses where SHARDING_CONFIG_JSON is given). Undefined where
 * every recent record is `own`, where the catalog has no table (migration 022 not applied), and
 * where the records could not be read: the listing stands without the remark, and no catalog
 * error's text goes into a response (README). One small read of a table of a few rows.
 */
export async function otherRoutingsRemark(catalog: Queryable, own: MoveRouting): Promise<string | undefined> {
  let recorded: readonly RecordedRouting[] | undefined;
  try {
    recorded = await recordedRoutings(catalog, DEFAULT_RECORDED_WITHIN_MS);
  } catch {
    return undefined;
  }
  if (recorded === undefined) return undefined;
  const others = byRouting(recorded).filter((g) => g.routing === undefined || !sameRouting(g.routing, own));
  if (others.length === 0) return undefined;
  const differing = others.map((g) => `${g.text}, recorded by ${whoRecorded(g.records)}`).join('; ');
  const superseded = supersededRemark(others.flatMap((g) => g.records), 'api');
  return (
    `runtimes recorded another routing than this API's within the last ${hours(DEFAULT_RECORDED_WITHIN_MS)} (catalog.runtime_routings): ${differing}. ` +
    `${superseded === '' ? '' : `${superseded}. `}` +
    `The directory rows' route and action are judged by this API's routing, ${describeRouting(own)}; while a router may still run with another, ` +
    `ca-dms-scaling shards fences --settle leaves those rows to the operator (or refuses, given SHARDING_CONFIG_JSON) until the routings agree`
  );
}
