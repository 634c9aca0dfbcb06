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

const ITEMS = `
  select 'decision'::text as kind, 'decision'::text as type, 'd' || id as id, decided_at as at, service, trigger, policy,
         from_count, to_count, direction, outcome, dry_run, reasons, blocked, actor, error,
         jsonb_build_object('degraded', degraded, 'config_version', config_version, 'metrics', metrics) as detail
    from catalog.scaling_decisions
  union all
  select 'event', 'config_changed', 'c' || version, changed_at, null, 'api', null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, changed_by, null,
         jsonb_build_object('version', version, 'comment', comment)
    from catalog.scaling_config
  union all
  select 'event', case when enabled then 'started' else 'stopped' end, 's' || id, at, nullif(scope, '*'), 'api', null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, actor, null,
         jsonb_build_object('scope', scope, 'changed', changed, 'reason', reason)
    from catalog.switch_events
  union all
  select 'event', 'alarm', 'a' || md5(message_id), received_at, service, 'alarm', null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, alarm_name, null,
         jsonb_build_object('alarm_name', alarm_name, 'state', new_state, 'reason', reason, 'state_changed_at', state_changed_at)
    from catalog.scaling_alarms
  union all
  select 'event', 'gap', 'g' || id, recorded_at, null, null, null,
         null, null, null, null, null, '[]'::jsonb, '[]'::jsonb, null, note,
         jsonb_build_object('from', from_at, 'to', to_at, 'decisions', decisions, 'note', note)
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

function decodeCursor(cursor: string): [string, string] {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (Array.isArray(value) && value.length === 2 && typeof value[0] === 'string' && /^\d{1,20}$/.test(value[0]) && typeof value[1] === 'string' && /^[a-z][0-9a-f]{1,40}$/.test(value[1])) {
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
    const sql = `select * from (select i.*, (extract(epoch from i.at) * 1000000)::bigint as at_us from (${ITEMS}) i) h
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
