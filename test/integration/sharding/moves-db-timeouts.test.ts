import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, documentsOf, keysInSlot, seedUsers, sides } from './fixtures/move-env.js';
import { startFaultEnv, type FaultEnv } from './fixtures/restartable.js';
import { startWorkload } from './fixtures/workload.js';

let env: FaultEnv;
beforeAll(async () => {
  env = await startFaultEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
}, 60_000);

const POINTS: MoveHookPoint[] = ['copying', 'catching_up', 'cutover', 'fenced', 'verifying', 'published', 'cleaning_up'];
describe('statement_timeout / lock_timeout of the target database hitting a step', () => {
  it.each(POINTS.flatMap((point) => ['statement_timeout', 'lock_timeout'].map((setting) => ({ point, setting }))).map((c, i) => ({ ...c, slot: 1700 + i })))(
    '$setting at $point: the run stops with the unit writable, and resumes to done',
    async ({ point, setting, slot }) => {
      const { from, to, source, target } = await sides(env, slot);
      const owners = keysInSlot(slot, 30);
      await seedUsers(source, slot, owners, 5);
      const seeded = await documentsOf(source, owners);
      const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1', [slot]);
      const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
      const admin = new pg.Client({ connectionString: env.urls.shards[to] });
      await admin.connect();
      const load = startWorkload(env.writer, { owners, documents: seeded, ownerOf: new Map(rows.map((r) => [r.id, r.owner])), writers: 2 });
      const first = await env
        .mover({
          readerGraceMs: 0,
          leaseTtlMs: 1000,
          async hook(p) {
            if (p !== point) return;
            await admin.query(`alter database ${to} set ${setting} = 1`);
            // Sessions opened from now on have it (as after a parameter change and a reconnect).
            await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
          },
        })
        .run(planned.id)
        .then((j) => j.state, (e: Error) => `threw: ${e.message.slice(0, 160)}`);
      const fence = (await source.query<{ state: string }>(`select state from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows[0]?.state;
      await admin.query(`alter database ${to} reset ${setting}`);
      await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
      await admin.end();
      // While the job waits for its next run, the source is not left fenced.
      expect(fence, first).not.toBe('fenced');
      let job = await env.mover().get(planned.id);
      for (let i = 0; i < 10 && job.state !== 'done'; i++) {
        job = await env.mover({ readerGraceMs: 0, leaseTtlMs: 1000 }).run(planned.id).catch(async () => env.mover().get(planned.id));
      }
      const result = await load.stop();
      expect(job.state).toBe('done');
      expect(result.anomalies).toEqual([]);
      expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
      const onTarget = await documentsOf(target, owners);
      expect([...result.live].filter(([id, rev]) => onTarget.get(id) !== rev)).toEqual([]);
      expect([...onTarget.keys()].filter((id) => !result.live.has(id) && !result.uncertain.has(id))).toEqual([]);
      void from;
    },
    60_000,
  );
});
