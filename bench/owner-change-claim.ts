/**
 * What the check of a mover's `rowsLeftOn: 'move job #<id>'` claim (issue #15's review) adds to
 * the mover's publications, which run while the unit's writes are fenced: the flip's slot map
 * publication and the directory pin, each timed with the claim checked against the catalog and
 * with `'checked'` (no check), in a transaction rolled back, alternated, `--n` times each.
 *
 * Run: `npx tsx bench/owner-change-claim.ts [--n 300]`.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { DirectoryStore } from '../functions/adapters/postgres/directory-store.js';
import { SlotMapStore } from '../functions/adapters/postgres/slot-map-store.js';
import type { RowsLeftOn } from '../functions/adapters/postgres/unit-rows.js';
import { moveSlots } from '../functions/core/sharding/slot-map.js';
import { keysInSlot, startMoveEnv } from '../test/integration/sharding/fixtures/move-env.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '300' } } });
const n = z.coerce.number().int().min(10).max(100_000).parse(values.n);

const env = await startMoveEnv({ shards: 2 });
try {
  // The stores as the sharding runtime builds them (the move env's have no shard pools: they count nothing, and check no claim).
  const slotMaps = new SlotMapStore(env.catalog, { shardPools: env.shards });
  const directory = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: env.shards });
  const slot = 77;
  const from = await env.ownerOf(slot);
  const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
  // A directory move's key in another slot of the same owner (one unfinished move per slot).
  const keySlot = slot + 1;
  if ((await env.ownerOf(keySlot)) !== from) throw new Error(`slots ${slot} and ${keySlot} have other owners`);
  const key = keysInSlot(keySlot, 1)[0] as string;
  const insert = async (kind: string, unit: string, unitSlot: number): Promise<`move job #${number}`> => {
    const { rows } = await env.catalog.query<{ id: string }>(
      `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by) values ($1, $2, $3, $4, $5, 'verifying', 'bench') returning id`,
      [kind, unit, unitSlot, from, to],
    );
    return `move job #${Number(rows[0]?.id)}`;
  };
  const slotJob = await insert('slot', String(slot), slot);
  const keyJob = await insert('directory', key, keySlot);
  const client = await env.catalog.connect();
  const timed = async (fn: (claim: RowsLeftOn) => Promise<unknown>, writer: string, claim: RowsLeftOn): Promise<number> => {
    await client.query('begin');
    await client.query(`select set_config('ca_dms.map_writer', $1, true), set_config('ca_dms.pin_writer', $1, true)`, [writer]);
    const t0 = process.hrtime.bigint();
    await fn(claim);
    const t = Number(process.hrtime.bigint() - t0) / 1e6;
    await client.query('rollback');
    return t;
  };
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const p90 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)] as number;
  try {
    const map = await slotMaps.current();
    const next = moveSlots(map, [slot], to);
    const cases: Array<[string, (claim: RowsLeftOn) => Promise<unknown>, `move job #${number}`]> = [
      ['slot map publish (flip)', (claim) => slotMaps.publish(next, 'mover', 'bench', client, { rowsLeftOn: claim }), slotJob],
      ['directory pin (flip)', (claim) => directory.set(key, to, 'mover', client, null, { rowsLeftOn: claim }), keyJob],
    ];
    for (const [name, fn, job] of cases) {
      const checked: number[] = [];
      const claimed: number[] = [];
      for (let i = 0; i < n; i++) {
        checked.push(await timed(fn, job, 'checked'));
        claimed.push(await timed(fn, job, job));
      }
      console.log(
        `${name}: 'checked' median ${median(checked).toFixed(3)} ms (p90 ${p90(checked).toFixed(3)}); '${job}' median ${median(claimed).toFixed(3)} ms (p90 ${p90(claimed).toFixed(3)}); added ${(median(claimed) - median(checked)).toFixed(3)} ms`,
      );
    }
  } finally {
    client.release();
  }
} finally {
  await env.stop();
}
