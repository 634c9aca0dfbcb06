/**
 * Demo CA-DMS data for local mode: users and their documents, each user placed by the router and
 * written through `withShardWrite` like any application write, so the shards hold what the
 * routing rules say they should. Seeding is skipped when any shard already has users (a second
 * start keeps what the first one wrote, and whatever was written since), unless the seeding that
 * wrote them was cut off: the `pendingMarker` file, written before its first user and removed
 * after its last, says so, and the next seeding completes it (the users' ids follow from their
 * addresses, so a user already written, in one transaction with its documents, is skipped).
 * It completes what was asked of the seeding cut off, which the marker records: a restart's
 * `--seed-users` (its default 200 when left out) is for a fresh start, and would otherwise leave
 * a first start's 1000 users at 200, or at however many were written before it was cut off.
 *
 * @example
 * ```ts
 * const outcome = await seedDemoData({ writer, primaries, users: 200, documentsPerUser: 5 });
 * outcome.seeded; // false on a second start
 * ```
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
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
  /**
   * A file that exists while a seeding is under way (local mode: in its data directory), so that
   * one cut off (the process killed) is completed by the next instead of kept as it was.
   * Default none: a seeding cut off is then kept.
   */
  readonly pendingMarker?: string;
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

const MARKER = /^seeding (\d+) users, (\d+) documents each\n?$/;

/** The most users a seeding writes: `--seed-users`' maximum, and the most a marker may ask for. */
export const MAX_SEED_USERS = 100_000;
/** The most documents per user a marker may ask for (local mode seeds 5). */
export const MAX_SEED_DOCUMENTS_PER_USER = 1_000;

/** A seeding's marker asks for what no seeding would write (edited by hand, or corrupted). */
export class SeedMarkerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SeedMarkerError';
  }
}

/**
 * What a seeding cut off was asked to write, from its marker; undefined when the marker does not
 * say (empty: the process died as it wrote it, before any user), and the start's own request applies.
 * Numbers beyond what a start may ask for are refused (SeedMarkerError), not seeded for hours or
 * for ever (`Number` of a long run of digits is Infinity).
 */
function recordedRequest(path: string, text: string): { users: number; documentsPerUser: number } | undefined {
  const m = MARKER.exec(text);
  if (!m) return undefined;
  const request = { users: Number(m[1]), documentsPerUser: Number(m[2]) };
  if (request.users > MAX_SEED_USERS || request.documentsPerUser > MAX_SEED_DOCUMENTS_PER_USER) {
    throw new SeedMarkerError(
      `the marker of a seeding that was cut off, ${path}, asks for ${m[1]} users with ${m[2]} documents each, beyond what a start may ask for ` +
        `(at most ${MAX_SEED_USERS} users, ${MAX_SEED_DOCUMENTS_PER_USER} documents each); nothing was seeded. ` +
        'Remove the file to seed what this start asks for instead (users already written are kept).',
    );
  }
  return request;
}

/** Seeds `users` users with `documentsPerUser` documents each, unless the shards already have users. */
export async function seedDemoData(options: SeedOptions): Promise<SeedOutcome> {
  const before = await counts(options.primaries);
  const marker = options.pendingMarker;
  const cutOff = marker !== undefined && existsSync(marker);
  if (!cutOff && Object.values(before.usersByShard).some((n) => n > 0)) return { seeded: false, ...before };
  const recorded = cutOff ? recordedRequest(marker, await readFile(marker, 'utf8').catch(() => '')) : undefined;
  const asked = recorded ?? { users: options.users, documentsPerUser: options.documentsPerUser };
  // Flushed before the first user is written: a seeding cut off by a power loss is still known.
  if (marker !== undefined && recorded === undefined) await writeFile(marker, `seeding ${asked.users} users, ${asked.documentsPerUser} documents each\n`, { flush: true });
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < asked.users) {
      const i = next++;
      const email = `user${i + 1}@ca-dms.example`;
      // The id the documents API gives this address, so signing up with it again is a 409.
      const id = userIdForEmail(email);
      await options.writer.withShardWrite(id, async ({ client, slot }) => {
        const user = await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4) on conflict do nothing', [id, slot, email, `Demo user ${i + 1}`]);
        // Written, with its documents, by a seeding that was cut off afterwards.
        if (user.rowCount === 0) return;
        for (let d = 0; d < asked.documentsPerUser; d++) {
          const title = `${TITLES[(i + d) % TITLES.length] ?? 'Document'} #${d + 1}`;
          await client.query('insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, $4, $5)', [randomUUID(), id, slot, title, JSON.stringify({ body: `${title} of demo user ${i + 1}`, tags: ['demo'] })]);
        }
      });
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 8) }, worker));
  if (marker !== undefined) await rm(marker, { force: true });
  return { seeded: true, ...(await counts(options.primaries)) };
}
