/**
 * The demo data of a first start: a start cut off while it seeds (killed outright, or Ctrl-C past
 * the start-up's grace) leaves part of it, and the next start on that data completes it, every
 * user once with its documents, instead of keeping the part as if it were the operator's data.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, postgresProcessesUnder, startLocalProcess, tempDataDir, type LocalProcess } from './support/local-process.js';

const USERS = 400;
const ARGS = ['--shards', '1', '--replicas', '0', '--seed-users', String(USERS)];

/** The shard primary's URL, from the data directory (its manifest's password, its postmaster.pid's port). */
async function shardUrl(dataDir: string): Promise<string> {
  const { password } = JSON.parse(await readFile(join(dataDir, 'pg', 'cluster.json'), 'utf8')) as { password: string };
  const port = (await readFile(join(dataDir, 'pg', 'shard_001', 'primary', 'postmaster.pid'), 'utf8')).split('\n')[3]?.trim();
  return `postgresql://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/ca_dms`;
}

async function counts(dataDir: string): Promise<{ users: number; documents: number; emails: number }> {
  const client = new pg.Client({ connectionString: await shardUrl(dataDir), connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const { rows } = await client.query<{ users: number; documents: number; emails: number }>(
      'select (select count(*) from users)::int as users, (select count(*) from documents)::int as documents, (select count(distinct email) from users)::int as emails',
    );
    return rows[0] as { users: number; documents: number; emails: number };
  } finally {
    await client.end().catch(() => undefined);
  }
}

describe('seeding the demo data of a first start', () => {
  const runs: LocalProcess[] = [];
  let dataDir: string | undefined;

  afterAll(async () => {
    for (const run of runs) await run.stop('SIGKILL');
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('completes, at the next start, the seeding of a first start killed part-way through it', async () => {
    dataDir = await tempDataDir();
    const dir = dataDir;
    const first = await startLocalProcess({ dataDir: dir, args: ARGS, waitForBanner: false });
    runs.push(first);
    const part = await eventually(
      async () => {
        const c = await counts(dir);
        return c.users > 0 ? c : undefined;
      },
      60_000,
      'the first users seeded',
    );
    first.child.kill('SIGKILL');
    await first.exited;
    await eventually(async () => ((await postgresProcessesUnder(dir)).length === 0 ? true : undefined), 10_000, 'no PostgreSQL process after SIGKILL');

    const next = await startLocalProcess({ dataDir: dir, args: ARGS });
    runs.push(next);
    const after = await counts(dir);

    expect(part.users).toBeLessThan(USERS);
    expect(after).toEqual({ users: USERS, documents: USERS * 5, emails: USERS });
    expect(next.output()).toContain(`users shard_001 ${USERS}; ${USERS * 5} documents`);
    expect(await next.stop('SIGTERM')).toBe(0);
  }, 120_000);
});
