/**
 * Demo CA-DMS data for local mode: users and their documents, each user placed by the router and
 * written through `withShardWrite` like any application write, so the shards hold what the
 * routing rules say they should. Seeding is skipped when any shard already has users (a second
 * start keeps what the first one wrote, and whatever was written since).
 *
 * @example
 * ```ts
 * const outcome = await seedDemoData({ writer, primaries, users: 200, documentsPerUser: 5 });
 * outcome.seeded; // false on a second start
 * ```
 */
import { randomUUID } from 'node:crypto';
import { userIdForEmail } from './documents-api.js';
import type pg from 'pg';
import type { ShardWriter } from '../adapters/postgres/write-transaction.js';

export interface SeedOptions {
  readonly writer: ShardWriter;
  /** Primary pool of every shard, to check whether data is already there. */
  readonly primaries: ReadonlyMap<string, pg.Pool>;
  readonly users: number;
  readonly documentsPerUser: number;
  /** Writes in flight at once. Default 8. */
  readonly concurrency?: number;
}

export interface SeedOutcome {
  readonly seeded: boolean;
  /** Users per shard after seeding (or as found). */
  readonly usersByShard: Readonly<Record<string, number>>;
  readonly documents: number;
}

const TITLES = ['Board minutes', 'Budget proposal', 'Bylaws amendment', 'Policy draft', 'Meeting agenda', 'Annual report', 'Grant application', 'Contract review'];

async function counts(primaries: ReadonlyMap<string, pg.Pool>): Promise<{ usersByShard: Record<string, number>; documents: number }> {
  const entries = await Promise.all(
    [...primaries].map(async ([shardId, pool]) => {
      const { rows } = await pool.query<{ users: number; documents: number }>('select (select count(*) from users)::int as users, (select count(*) from documents)::int as documents');
      return [shardId, rows[0]?.users ?? 0, rows[0]?.documents ?? 0] as const;
    }),
  );
  return { usersByShard: Object.fromEntries(entries.map(([s, u]) => [s, u])), documents: entries.reduce((n, [, , d]) => n + d, 0) };
}

/** Seeds `users` users with `documentsPerUser` documents each, unless the shards already have users. */
export async function seedDemoData(options: SeedOptions): Promise<SeedOutcome> {
  const before = await counts(options.primaries);
  if (Object.values(before.usersByShard).some((n) => n > 0)) return { seeded: false, ...before };
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < options.users) {
      const i = next++;
      const email = `user${i + 1}@ca-dms.example`;
      // The id the documents API gives this address, so signing up with it again is a 409.
      const id = userIdForEmail(email);
      await options.writer.withShardWrite(id, async ({ client, slot }) => {
        await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [id, slot, email, `Demo user ${i + 1}`]);
        for (let d = 0; d < options.documentsPerUser; d++) {
          const title = `${TITLES[(i + d) % TITLES.length] ?? 'Document'} #${d + 1}`;
          await client.query('insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, $4, $5)', [randomUUID(), id, slot, title, JSON.stringify({ body: `${title} of demo user ${i + 1}`, tags: ['demo'] })]);
        }
      });
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 8) }, worker));
  return { seeded: true, ...(await counts(options.primaries)) };
}
