/**
 * The scaling history as operators read it: decisions and events (configuration changes,
 * starts and stops, alarms, gaps in the record) merged newest first, filtered, and paged with
 * an opaque cursor that stays stable while new rows arrive.
 *
 * @example
 * ```ts
 * const reader = new HistoryReader(pool);
 * const first = await reader.page({ service: 'worker', limit: 20 });
 * const second = await reader.page({ service: 'worker', limit: 20, cursor: first.nextCursor ?? undefined });
 * ```
 */
import type pg from 'pg';
import type { Block, Reason } from '../../core/scaling/types.js';

export interface HistoryFilter {
  readonly service?: string;
  readonly direction?: 'out' | 'in' | 'none';
  readonly outcome?: string;
  readonly trigger?: 'schedule' | 'alarm' | 'api';
  readonly kind?: 'decision' | 'event';
  readonly since?: Date;
  readonly until?: Date;
  /** 1..200, default 50. */
  readonly limit?: number;
  readonly cursor?: string;
}

export interface HistoryItem {
  readonly id: string;
  readonly kind: 'decision' | 'event';
  readonly type: string;
  readonly at: Date;
  readonly service: string | null;
  readonly trigger: string | null;
  readonly policy: string | null;
  readonly from: number | null;
  readonly to: number | null;
  readonly direction: 'out' | 'in' | 'none' | null;
  readonly outcome: string | null;
  readonly dryRun: boolean | null;
  readonly reasons: readonly Reason[];
  readonly blocked: readonly Block[];
  readonly actor: string | null;
  readonly error: string | null;
  readonly detail: Record<string, unknown> | null;
}

export interface HistoryPage {
  readonly items: readonly HistoryItem[];
  readonly nextCursor: string | null;
}

/** A cursor that was not produced by this reader. */
export class InvalidCursorError extends Error {
  override readonly name = 'InvalidCursorError';
  constructor(options?: { cause?: unknown }) {
    super('the cursor is not one this API issued; start again without it', options);
  }
}

// Every call matches one of pg_catalog's exactly (`::text` before `||`, `1000000::numeric`) or is
// named `pg_catalog.`: an application login's overload in the public schema (PostgreSQL 14) of a
// polymorphic or variadic function would run as the control login (least-privilege.test.ts).
const ITEMS = `
  select 'decision'::text as kind, 'decision'::text as type, 'd' || id::text as id, decided_at as at, service, trigger, policy,
         from_count, to_count, direction, outcome, dry_run, reasons, blocked, actor, error,
         pg_catalog.jsonb_build_object('degraded', degraded, 'config_version', config_version, 'metrics', metrics) as detail
    from catalog.scaling_decisions
  union all
  select 'event', 'config_changed', 'c' || version::text, changed_at, null, 'api', null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, changed_by, null,
         pg_catalog.jsonb_build_object('version', version, 'comment', comment)
    from catalog.scaling_config
  union all
  select 'event', case when enabled then 'started' else 'stopped' end, 's' || id::text, at, nullif(scope, '*'), 'api', null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, actor, null,
         pg_catalog.jsonb_build_object('scope', scope, 'changed', changed, 'reason', reason)
    from catalog.switch_events
  union all
  select 'event', 'alarm', 'a' || md5(message_id), received_at, service, 'alarm', null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, alarm_name, null,
         pg_catalog.jsonb_build_object('alarm_name', alarm_name, 'state', new_state, 'reason', reason, 'state_changed_at', state_changed_at)
    from catalog.scaling_alarms
  union all
  select 'event', 'gap', 'g' || id::text, recorded_at, null, null, null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, null, note,
         pg_catalog.jsonb_build_object('from', from_at, 'to', to_at, 'decisions', decisions, 'note', note)
    from catalog.history_gaps`;

interface Row {
  kind: 'decision' | 'event';
  type: string;
  id: string;
  at: Date;
  at_us: string;
  service: string | null;
  trigger: string | null;
  policy: string | null;
  from_count: number | null;
  to_count: number | null;
  direction: 'out' | 'in' | 'none' | null;
  outcome: string | null;
  dry_run: boolean | null;
  reasons: Reason[];
  blocked: Block[];
  actor: string | null;
  error: string | null;
  detail: Record<string, unknown> | null;
}

function encodeCursor(atUs: string, id: string): string {
  return Buffer.from(JSON.stringify([atUs, id]), 'utf8').toString('base64url');
}

/** The largest PostgreSQL bigint: a cursor's instant is compared as one (beyond it, 22003 and a 500). */
const MAX_BIGINT = 9_223_372_036_854_775_807n;

function decodeCursor(cursor: string): [string, string] {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (
      Array.isArray(value) &&
      value.length === 2 &&
      typeof value[0] === 'string' &&
      /^\d{1,19}$/.test(value[0]) &&
      BigInt(value[0]) <= MAX_BIGINT &&
      typeof value[1] === 'string' &&
      /^[a-z][0-9a-f]{1,40}$/.test(value[1])
    ) {
      return [value[0], value[1]];
    }
  } catch (err) {
    throw new InvalidCursorError({ cause: err });
  }
  throw new InvalidCursorError();
}

/** Reads the merged history from the catalog. */
export class HistoryReader {
  constructor(private readonly db: () => Promise<Pick<pg.Pool, 'query'>>) {}

  /**
   * Every evaluation records the metrics it read and the desired count it left, so the decision
   * record is itself the time series of each service: bucketed in the database (one row per
   * service and bucket, over the (service, decided_at) index), with the changes beside it.
   *
   * @example
   * ```ts
   * const { buckets, changes } = await reader.series({ since: new Date(Date.now() - 3_600_000), until: new Date(), stepSeconds: 10 });
   * ```
   */
  async series(q: SeriesQuery): Promise<{ buckets: SeriesBucket[]; changes: SeriesChange[] }> {
    return seriesOf(await this.db(), q);
  }

  /** One page, newest first. Throws {@link InvalidCursorError} for a foreign cursor. */
  async page(filter: HistoryFilter): Promise<HistoryPage> {
    const limit = Math.min(Math.max(filter.limit ?? 50, 1), 200);
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (sql: (p: string) => string, value: unknown): void => {
      params.push(value);
      where.push(sql(`$${params.length}`));
    };
    if (filter.service !== undefined) add((p) => `service = ${p}`, filter.service);
    if (filter.direction !== undefined) add((p) => `direction = ${p}`, filter.direction);
    if (filter.outcome !== undefined) add((p) => `outcome = ${p}`, filter.outcome);
    if (filter.trigger !== undefined) add((p) => `trigger = ${p}`, filter.trigger);
    if (filter.kind !== undefined) add((p) => `kind = ${p}`, filter.kind);
    if (filter.since !== undefined) add((p) => `at >= ${p}`, filter.since);
    if (filter.until !== undefined) add((p) => `at < ${p}`, filter.until);
    if (filter.cursor !== undefined) {
      const [atUs, id] = decodeCursor(filter.cursor);
      params.push(atUs, id);
      where.push(`(at_us, id) < ($${params.length - 1}::bigint, $${params.length})`);
    }
    params.push(limit + 1);
    const sql = `select * from (select i.*, (extract(epoch from i.at) * 1000000::numeric)::bigint as at_us from (${ITEMS}) i) h
      ${where.length > 0 ? `where ${where.join(' and ')}` : ''}
      order by at_us desc, id desc limit $${params.length}`;
    const { rows } = await (await this.db()).query<Row>(sql, params);
    const items = rows.slice(0, limit).map(
      (r): HistoryItem => ({
        id: r.id,
        kind: r.kind,
        type: r.type,
        at: r.at,
        service: r.service,
        trigger: r.trigger,
        policy: r.policy,
        from: r.from_count,
        to: r.to_count,
        direction: r.direction,
        outcome: r.outcome,
        dryRun: r.dry_run,
        reasons: r.reasons,
        blocked: r.blocked,
        actor: r.actor,
        error: r.error,
        detail: r.detail,
      }),
    );
    const last = rows.length > limit ? rows[limit - 1] : undefined;
    return { items, nextCursor: last ? encodeCursor(last.at_us, last.id) : null };
  }
}

/** A window of the decision record reduced to buckets (see {@link HistoryReader.series}). */
export interface SeriesQuery {
  readonly service?: string;
  readonly since: Date;
  readonly until: Date;
  readonly stepSeconds: number;
}

/** One bucket of one service: the evaluations recorded in it, summarised. */
export interface SeriesBucket {
  readonly service: string;
  /** Start of the bucket. */
  readonly at: Date;
  /** Requests per minute, mean and highest of the bucket's evaluations (null: none recorded). */
  readonly demand: number | null;
  readonly demandMax: number | null;
  /** CPU %, mean and highest. */
  readonly cpu: number | null;
  readonly cpuMax: number | null;
  /** The desired count after the bucket's last evaluation. */
  readonly tasks: number;
}

/** A decision that changed (or failed to change) a desired count. */
export interface SeriesChange {
  readonly service: string;
  readonly at: Date;
  readonly from: number;
  readonly to: number;
  readonly direction: 'out' | 'in' | 'none';
  readonly outcome: 'applied' | 'failed';
  readonly trigger: string;
  readonly dryRun: boolean;
  readonly reasons: readonly Reason[];
  readonly blocked: readonly Block[];
  readonly error: string | null;
}

/** Changes listed per window at most; a window with more is cut to the newest ones. */
export const SERIES_CHANGE_LIMIT = 1000;

/** The queries behind {@link HistoryReader.series}. */
async function seriesOf(pool: Pick<pg.Pool, 'query'>, q: SeriesQuery): Promise<{ buckets: SeriesBucket[]; changes: SeriesChange[] }> {
  const service = q.service ?? null;
  const [buckets, changes] = await Promise.all([
    pool.query<{ service: string; bucket: number; demand: number | null; demand_max: number | null; cpu: number | null; cpu_max: number | null; tasks: number }>(
      `select service, floor(extract(epoch from decided_at - $1::timestamptz) / $3)::int as bucket,
              avg((metrics->>'requestCount')::float8) as demand, max((metrics->>'requestCount')::float8) as demand_max,
              avg((metrics->>'cpu')::float8) as cpu, max((metrics->>'cpu')::float8) as cpu_max,
              (pg_catalog.array_agg(to_count order by decided_at desc, id desc))[1] as tasks
         from catalog.scaling_decisions
        where decided_at >= $1 and decided_at < $2 and ($4::text is null or service = $4)
        group by service, bucket
        order by service, bucket`,
      [q.since, q.until, q.stepSeconds, service],
    ),
    pool.query<{ service: string; decided_at: Date; from_count: number; to_count: number; direction: SeriesChange['direction']; outcome: SeriesChange['outcome']; trigger: string; dry_run: boolean; reasons: Reason[]; blocked: Block[]; error: string | null }>(
      `select * from (
         select service, decided_at, id, from_count, to_count, direction, outcome, trigger, dry_run, reasons, blocked, error
           from catalog.scaling_decisions
          where decided_at >= $1 and decided_at < $2 and ($3::text is null or service = $3)
            and outcome in ('applied', 'failed')
          order by decided_at desc, id desc
          limit ${SERIES_CHANGE_LIMIT}) c
        order by decided_at, id`,
      [q.since, q.until, service],
    ),
  ]);
  return {
    buckets: buckets.rows.map((r) => ({
      service: r.service,
      at: new Date(q.since.getTime() + r.bucket * q.stepSeconds * 1000),
      demand: r.demand,
      demandMax: r.demand_max,
      cpu: r.cpu,
      cpuMax: r.cpu_max,
      tasks: r.tasks,
    })),
    changes: changes.rows.map((r) => ({
      service: r.service,
      at: r.decided_at,
      from: r.from_count,
      to: r.to_count,
      direction: r.direction,
      outcome: r.outcome,
      trigger: r.trigger,
      dryRun: r.dry_run,
      reasons: r.reasons,
      blocked: r.blocked,
      error: r.error,
    })),
  };
}
