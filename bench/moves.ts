/**
 * Move benchmark: one hash slot holding 100,000 rows (users and their documents) moved from one
 * real PostgreSQL shard to another while writers keep writing to the moving keys through
 * `withShardWrite`. Prints the copy rate, the end-to-end rate, how long writes to the moving
 * keys were fenced (as the mover recorded it, and the slowest write the writers saw), and the
 * comparison with the goal: fenced for under 500 ms.
 *
 * Run: `npm run bench:moves` (options: `--users N` users in the slot, default 1000;
 * `--docs N` documents per user, default 99; `--writers N` concurrent writers, default 2).
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import type pg from 'pg';
import { z } from 'zod';
import { countSlot, documentsOf, keysInSlot, seedUsers, startMoveEnv } from '../test/integration/sharding/fixtures/move-env.js';
import { startWorkload } from '../test/integration/sharding/fixtures/workload.js';

const GOAL_FENCE_MS = 500;
const SLOT = 777;

const { values } = parseArgs({ options: { users: { type: 'string', default: '1000' }, docs: { type: 'string', default: '99' }, writers: { type: 'string', default: '2' } } });
const opts = z
  .object({
    users: z.coerce.number().int().min(1).max(100_000),
    docs: z.coerce.number().int().min(0).max(10_000),
    writers: z.coerce.number().int().min(0).max(32),
  })
  .safeParse(values);
if (!opts.success) {
  console.error(`bench:moves: ${opts.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  process.exit(2);
}
const { users: USERS, docs: DOCS, writers: WRITERS } = opts.data;

const ms = (a: Date | null, b: Date | null): number => (a && b ? b.getTime() - a.getTime() : Number.NaN);

const env = await startMoveEnv();
try {
  const from = await env.ownerOf(SLOT);
  const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
  const source = env.shards.get(from) as pg.Pool;
  const owners = keysInSlot(SLOT, USERS);
  await seedUsers(source, SLOT, owners, DOCS);
  await source.query('vacuum analyze users, documents');
  const seeded = await countSlot(source, SLOT);
  const rows = seeded.users + seeded.documents;
  const { rows: docRows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1', [SLOT]);
  const load =
    WRITERS > 0
      ? startWorkload(env.writer, {
          owners,
          documents: await documentsOf(source, owners),
          ownerOf: new Map(docRows.map((r) => [r.id, r.owner])),
          writers: WRITERS,
        })
      : undefined;

  const mover = env.mover({ readerGraceMs: 0 });
  const started = performance.now();
  const planned = await mover.plan({ kind: 'slot', slot: SLOT, to, createdBy: 'bench', reason: 'bench:moves' });
  const [moved] = await Promise.allSettled([mover.run(planned.id)]);
  const elapsedMs = performance.now() - started;
  const result = await load?.stop();
  if (moved.status === 'rejected') throw moved.reason;
  const job = moved.value;
  const { rows: steps } = await env.catalog.query<Record<string, Date | null>>(
    'select copying_at, catching_up_at, cutover_at, fenced_at, verifying_at, flip_started_at, unfenced_at, cleaning_up_at, finished_at from catalog.move_jobs where id = $1',
    [job.id],
  );
  const t = steps[0] ?? {};
  const copyMs = ms(t.copying_at ?? null, t.catching_up_at ?? null);
  const fenceMs = job.fenceMs ?? Number.NaN;

  console.log(`bench:moves on ${os.cpus().length} CPU(s), load average ${os.loadavg()[0]?.toFixed(1)}: slot ${SLOT}, ${from} -> ${to}`);
  console.log(`  rows in the slot            ${rows.toLocaleString('en')} (${seeded.users} users, ${seeded.documents} documents)`);
  console.log(`  concurrent writers          ${WRITERS}${result ? ` (${result.acknowledged} acknowledged writes, ${result.errors.length} errors, ${result.retried} waited or re-routed)` : ''}`);
  console.log(`  copy                        ${copyMs.toFixed(0)} ms  -> ${Math.round((job.rowsCopied / copyMs) * 1000).toLocaleString('en')} rows/s`);
  console.log(`  catch up                    ${ms(t.catching_up_at ?? null, t.cutover_at ?? null).toFixed(0)} ms (${job.changesApplied} changes applied in total)`);
  console.log(
    `  fenced: final catch-up ${ms(t.fenced_at ?? null, t.verifying_at ?? null).toFixed(0)} ms, verify ${ms(t.verifying_at ?? null, t.flip_started_at ?? null).toFixed(0)} ms, publish + release ${ms(t.flip_started_at ?? null, t.unfenced_at ?? null).toFixed(0)} ms`,
  );
  console.log(`  clean up (delete source)    ${ms(t.cleaning_up_at ?? null, t.finished_at ?? null).toFixed(0)} ms (${job.rowsDeleted} rows)`);
  console.log(`  end to end                  ${elapsedMs.toFixed(0)} ms  -> ${Math.round((rows / elapsedMs) * 1000).toLocaleString('en')} rows/s`);
  console.log(`  writes fenced (mover)       ${fenceMs.toFixed(0)} ms   goal < ${GOAL_FENCE_MS} ms: ${fenceMs < GOAL_FENCE_MS ? 'MET' : 'NOT MET'}`);
  if (result) console.log(`  slowest write (whole move)  ${result.maxLatencyMs.toFixed(0)} ms   goal < ${GOAL_FENCE_MS} ms: ${result.maxLatencyMs < GOAL_FENCE_MS ? 'MET' : 'NOT MET'}`);
  console.log(`  job                         #${job.id} ${job.state}; map version ${job.mapVersionBefore} -> ${job.mapVersionAfter}`);
} finally {
  await env.stop();
}
