/**
 * One query's plan as the plan benchmarks print it: EXPLAIN (ANALYZE, BUFFERS) inside a savepoint
 * rolled back afterwards (a DELETE explained deletes nothing), reduced to its execution time, its
 * buffer line and its plan nodes without their figures.
 */
import type pg from 'pg';

export interface ExplainedPlan {
  /** `Execution Time: 3.1 ms`. */
  readonly time: string | undefined;
  /** `Buffers: shared hit=2022`, or empty. */
  readonly buffers: string;
  /** The plan's nodes, one per line, without their actual figures. */
  readonly nodes: readonly string[];
}

/** Explains `sql` on `db` (in a transaction) after `setup` (settings for this query only). */
export async function explainPlan(db: pg.ClientBase, sql: string, params: readonly unknown[] = [], setup?: string): Promise<ExplainedPlan> {
  await db.query('savepoint q');
  try {
    if (setup) await db.query(setup);
    const { rows } = await db.query<{ 'QUERY PLAN': string }>(`explain (analyze, buffers, costs off, timing off) ${sql}`, [...params]);
    const lines = rows.map((r) => r['QUERY PLAN']);
    return {
      time: lines.find((l) => l.startsWith('Execution Time')),
      buffers: lines.find((l) => l.trim().startsWith('Buffers'))?.trim() ?? '',
      nodes: lines.filter((l) => /->|^\S/.test(l) && !/^(Planning|Execution)/.test(l)).map((l) => l.trim().replace(/\s+\(actual.*$/, '')),
    };
  } finally {
    await db.query('rollback to savepoint q');
  }
}

/** The plan as printed: `<label>: <time>; <buffers>` and its nodes indented below. */
export function formatPlan(label: string, plan: ExplainedPlan): string {
  return `${label}: ${plan.time}; ${plan.buffers}\n    ${plan.nodes.join('\n    ')}`;
}

/**
 * `body` once for each index set of `variants` (name: its DDL), printed with its name first: the
 * DDL and `analyze` (e.g. `analyze documents`) run in a transaction on `db` that is rolled back
 * after `body`, so each set starts from the shard as migrated.
 */
export async function forEachIndexSet(db: pg.ClientBase, variants: Readonly<Record<string, readonly string[]>>, analyze: string, body: () => Promise<void>): Promise<void> {
  for (const [variant, ddl] of Object.entries(variants)) {
    console.log(`\n== ${variant}`);
    await db.query('begin');
    try {
      for (const statement of ddl) await db.query(statement);
      await db.query(analyze);
      await body();
    } finally {
      await db.query('rollback');
    }
  }
}
