/**
 * Issue #15, property-based: the review of the fence rows hand changes leave (`ca-dms-scaling
 * shards fences --settle`, functions/adapters/postgres/fence-review.ts), slot rows and keys'
 * `directory` rows alike, interleaved with what leaves such rows and with what races them.
 *
 * Random schedules of pins changed by hand and slot maps published by hand (through stores given
 * the shards' pools, as `countingStores` builds them), some in a caller's transaction that commits
 * or rolls back, some by a process that dies after its fence (its put-back or settle lost: the old
 * owner's row left `fenced`), unpins, directory moves and slot moves (the Mover), and reviews that
 * settle with `--older-than 0` (the routing of hash_based with directory.override_hash on, as the
 * stores route), alone or at the same time as another change; owner changes past the stores made
 * as an operator's recovery makes them (a map published with `rowsLeftOn: 'checked'`, a pin
 * deleted by SQL past the guard), honestly: the unit's users emptied first, no write meanwhile, and
 * every router given the catalog's routes right after (no stale map or directory cache of before
 * it is used again), so that the review must settle what they leave over the rows of dead changes
 * (a give-back over a change that died after its commit) and refuse nothing for good; and writers whose routers hold
 * STALE maps and directory caches (re-read only when a write is refused), inserting, updating and
 * deleting users and documents of 2 slots over 3 shards while all this runs.
 *
 * A write refused meanwhile is allowed (a dead change's fence refuses the unit's writes until a
 * review settles it; such writers give up after 300 ms instead of 10 s). After each schedule two
 * more reviews settle what is left, then: every acknowledged write is there exactly once, on the
 * shard the catalog routes its key to (its pin, else its slot's owner in the current map), and
 * none of the key's rows is on any other shard; and a fresh writer writes every key on that shard
 * (no key refused for good).
 *
 * `TORTURE_RUNS` (default 4) sets the number of schedules; `TORTURE_SEED` replays one;
 * `TORTURE_LOG=1` prints every schedule's log.
 */
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { reviewFences, type FenceReview } from '../../../functions/adapters/postgres/fence-review.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import type { ShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { moveSlots, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { deletePinPastGuard, dyingAfterFence as dyingAfterFenceOf, keysInSlot, shardIds, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { placementViolations, runModelWrites, staleWriter as modelWriter, writeArb, type ModelWrites, type UserModel, type Write } from './fixtures/torture-writes.js';

const SHARDS = shardIds(3);
const USERS = 3;
/** hash_based with directory.override_hash on: the routing the stores and the writers here route by. */
const PINS_ROUTE: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };

/** How an owner change by hand is made: through a pool, inside a caller's transaction that commits or rolls back, or by a process that dies after its fence. */
type How = 'plain' | 'commit' | 'rollback' | 'dies';

type Action =
  | { readonly kind: 'publish'; readonly slot: number; readonly to: number; readonly how: How }
  | { readonly kind: 'move'; readonly slot: number; readonly to: number }
  | { readonly kind: 'pin'; readonly slot: number; readonly user: number; readonly to: number; readonly how: How; readonly repin: boolean }
  | { readonly kind: 'unpin'; readonly slot: number; readonly user: number }
  | { readonly kind: 'dirmove'; readonly slot: number; readonly user: number; readonly to: number }
  | { readonly kind: 'checked'; readonly slot: number; readonly to: number }
  | { readonly kind: 'sqlunpin'; readonly slot: number; readonly user: number }
  | { readonly kind: 'review' }
  | { readonly kind: 'stale'; readonly writer: number; readonly back: number }
  | { readonly kind: 'none' }
  | { readonly kind: 'both'; readonly first: Action; readonly second: Action };
interface Step {
  readonly action: Action;
  readonly writes: readonly Write[];
  /** Users emptied by the writers before the action (a change counts no rows then, and goes through). */
  readonly empty: boolean;
}

/** An owner change past the stores' count and fence, made by an operator who has checked the unit's rows. */
function pastTheStores(a: Action): a is Extract<Action, { kind: 'checked' | 'sqlunpin' }> {
  return a.kind === 'checked' || a.kind === 'sqlunpin';
}
const pastIn = (a: Action): boolean => pastTheStores(a) || (a.kind === 'both' && (pastIn(a.first) || pastIn(a.second)));

const howArb = fc.constantFrom<How>('plain', 'plain', 'commit', 'rollback', 'dies', 'dies');
const oneArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('publish' as const), slot: fc.nat(1), to: fc.integer({ min: 1, max: 2 }), how: howArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('move' as const), slot: fc.nat(1), to: fc.integer({ min: 1, max: 2 }) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('pin' as const), slot: fc.nat(1), user: fc.nat(USERS - 1), to: fc.integer({ min: 0, max: 2 }), how: howArb, repin: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unpin' as const), slot: fc.nat(1), user: fc.nat(USERS - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dirmove' as const), slot: fc.nat(1), user: fc.nat(USERS - 1), to: fc.integer({ min: 1, max: 2 }) }) },
  { weight: 3, arbitrary: fc.constant({ kind: 'review' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('checked' as const), slot: fc.nat(1), to: fc.integer({ min: 1, max: 2 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('sqlunpin' as const), slot: fc.nat(1), user: fc.nat(USERS - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('stale' as const), writer: fc.nat(2), back: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'none' as const }) },
);
/** Two at once: a review with a change, or two changes (never two of one slot's pins and its map: "A pin racing a change of its slot" serialises those). */
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 3, arbitrary: oneArb },
  { weight: 1, arbitrary: oneArb.map((first) => ({ kind: 'both' as const, first, second: { kind: 'review' as const } })) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('both' as const), first: oneArb, second: oneArb }).filter((b) => {
      const slotChange = (a: Action, c: Action): boolean => (a.kind === 'pin' || a.kind === 'unpin' || a.kind === 'sqlunpin') && (c.kind === 'publish' || c.kind === 'move' || c.kind === 'checked') && a.slot === c.slot;
      // A change past the stores is made over a unit the operator has checked: no other change of its slot meanwhile.
      const pastOver = (a: Action, c: Action): boolean => pastTheStores(a) && 'slot' in c && a.slot === c.slot;
      return !slotChange(b.first, b.second) && !slotChange(b.second, b.first) && !pastOver(b.first, b.second) && !pastOver(b.second, b.first);
    }),
  },
);
const stepArb: fc.Arbitrary<Step> = fc.record({ action: actionArb, writes: fc.array(writeArb(USERS), { minLength: 0, maxLength: 5 }), empty: fc.boolean() });

/** A writer whose router holds `map` and a directory cache of `ttlMs`, giving up on a fenced unit after `fenceWaitMs` (short: a schedule's dying changes leave fences). */
const staleWriter = (env: MoveEnv, map: SlotMap, ttlMs = 60_000, fenceWaitMs = 300): ShardWriter => modelWriter(env, map, ttlMs, fenceWaitMs);

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: SHARDS.length });
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

const dyingAfterFence = (shard: string): { pools: Map<string, pg.Pool>; dying: pg.Pool } => dyingAfterFenceOf(env.shards, shard, env.urls.shards[shard] as string);

/** Runs `change` with stores given the shards' pools as `how` says (a caller's transaction, or `from`'s pool dying after the fence). */
async function byHand<T>(how: How, from: string, change: (stores: { directory: DirectoryStore; slotMaps: SlotMapStore }, client: pg.Pool | pg.PoolClient) => Promise<T>): Promise<T> {
  const stores = (pools: ReadonlyMap<string, pg.Pool>): { directory: DirectoryStore; slotMaps: SlotMapStore } => ({
    directory: new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: pools }),
    slotMaps: new SlotMapStore(env.catalog, { shardPools: pools }),
  });
  if (how === 'dies') {
    const { pools, dying } = dyingAfterFence(from);
    try {
      return await change(stores(pools), env.catalog);
    } finally {
      await dying.end();
    }
  }
  if (how === 'plain') return change(stores(env.shards), env.catalog);
  const client = await env.catalog.connect();
  try {
    await client.query('begin');
    const out = await change(stores(env.shards), client);
    await client.query(how);
    return out;
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** A review's rows that are not settled or explained, as text. */
function leftOf(review: FenceReview): string[] {
  return review.rows.filter((r) => r.outcome === undefined || !r.outcome.startsWith('settled')).map((r) => `${r.shard} ${r.kind} ${r.unitId} ${r.state}${r.movedTo === null ? '' : `->${r.movedTo}`}: ${r.action}: ${(r.outcome ?? r.withheld ?? r.diagnosis).slice(0, 160)}`);
}

async function runSchedule(slots: readonly [number, number], steps: readonly Step[]): Promise<{ violations: string[]; log: string[] }> {
  const violations: string[] = [];
  const log: string[] = [];
  const keys = slots.map((s) => keysInSlot(s, USERS));
  const model = keys.map((ks) => ks.map<UserModel>(() => ({ exists: false, name: '', docs: new Set() })));
  const versions: SlotMap[] = [await env.slotMaps.current()];
  const writers: ShardWriter[] = [0, 1, 2].map(() => staleWriter(env, versions[0] as SlotMap));
  // Refusals meanwhile are allowed (a dead change's fence holds the unit until a review): the model takes acknowledged writes only.
  const refusedMeanwhile: string[] = [];
  const ctx: ModelWrites = { writers, model, keys, slots, log, violations: refusedMeanwhile };

  async function routeOf(key: string, slot: number): Promise<string> {
    const entry = await env.catalog.query<{ shard_id: string }>('select shard_id from catalog.shard_directory where key = $1', [key]);
    return entry.rows[0]?.shard_id ?? ((await env.slotMaps.current()).assignments[slot] as string);
  }

  async function review(what: string): Promise<void> {
    try {
      const r = await reviewFences({ catalog: env.catalog, shards: env.shards, routing: PINS_ROUTE, settle: true, olderThanMs: 0 });
      const settled = r.rows.filter((x) => x.outcome?.startsWith('settled')).map((x) => `${x.shard} ${x.kind} ${x.unitId} ${x.state}: ${x.outcome ?? ''}`);
      log.push(`${what}: ${settled.length} settled${settled.length > 0 ? ` (${settled.join('; ')})` : ''}${r.changeInFlight === undefined ? '' : ', a change in flight'}; left: ${JSON.stringify(leftOf(r))}`);
    } catch (err) {
      violations.push(`${what} failed: ${String(err)}`);
    }
  }

  async function runAction(a: Action): Promise<void> {
    if (a.kind === 'none') return;
    if (a.kind === 'both') {
      await Promise.all([runAction(a.first), runAction(a.second)]);
      return;
    }
    if (a.kind === 'review') return review('review');
    if (a.kind === 'stale') {
      const map = versions[Math.max(0, versions.length - a.back)] as SlotMap;
      writers[a.writer] = staleWriter(env, map);
      log.push(`writer w${a.writer} now holds map version ${map.version}`);
      return;
    }
    if (pastTheStores(a)) {
      // Made only over a unit found empty, as an operator's check finds it (emptying it may have been refused: a dead change's fence).
      const left = emptied(a).filter(([s, u]) => model[s]?.[u]?.exists);
      if (left.length > 0) {
        log.push(`${a.kind} of slot ${slots[a.slot] ?? '?'} not made: ${left.map(([s, u]) => `s${s}u${u}`).join(', ')} still has rows`);
        return;
      }
      // And only where the unit's row on the shard it will route to is none, `open`, or a hand
      // change's (which the review settles), as the operator's check finds it: over a move's row
      // there the unit is refused (CAF02) by a row no review may take, and a move planned from there
      // stops on it ("the catalog and the shard disagree"), unfinished until someone cancels it.
      const slot = slots[a.slot] as number;
      const current = await env.slotMaps.current();
      const landing = a.kind === 'checked' ? (SHARDS[(SHARDS.indexOf(current.assignments[slot] as string) + a.to) % SHARDS.length] as string) : (current.assignments[slot] as string);
      const unit = a.kind === 'checked' ? ['slot', String(slot)] : ['directory', keys[a.slot]?.[a.user] as string];
      const { rows: moveRows } = await (env.shards.get(landing) as pg.Pool).query<{ state: string; job_id: string }>(
        `select state, job_id::text from write_fences where kind = $1 and unit_id = $2 and state <> 'open' and job_id is not null`,
        unit,
      );
      if (moveRows.length > 0) {
        log.push(`${a.kind} ${unit.join(' ')} not made: its row on ${landing} is move job #${moveRows[0]?.job_id ?? '?'}'s '${moveRows[0]?.state ?? '?'}'`);
        return;
      }
    }
    if (a.kind === 'sqlunpin') {
      const key = keys[a.slot]?.[a.user] as string;
      log.push(`unpin past the guard s${a.slot}u${a.user} (pinned to ${await routeOf(key, slots[a.slot] as number)}): ${String(await deletePinPastGuard(env.catalog, key))}`);
      return;
    }
    if (a.kind === 'pin' || a.kind === 'unpin' || a.kind === 'dirmove') {
      const key = keys[a.slot]?.[a.user] as string;
      const slot = slots[a.slot] as number;
      const from = await routeOf(key, slot);
      const to = a.kind === 'unpin' ? '' : (SHARDS[(SHARDS.indexOf(from) + a.to) % SHARDS.length] as string);
      const what = `${a.kind === 'pin' ? `${a.repin ? 'repin' : 'set'} (${a.how})` : a.kind} s${a.slot}u${a.user} ${from} -> ${to || 'by-hash'}`;
      try {
        if (a.kind === 'dirmove') {
          const mover = env.mover({ readerGraceMs: 0 });
          const ended = await mover.run((await mover.plan({ kind: 'directory', key, to, createdBy: 'torture' })).id);
          log.push(`${what}: ${ended.state}${ended.error ? ` (${ended.error.slice(0, 200)})` : ''}`);
        } else if (a.kind === 'unpin') {
          log.push(`${what}: ${String(await byHand('plain', from, ({ directory }, c) => directory.delete(key, c)))}`);
        } else {
          const entry = await byHand(a.how, from, ({ directory }, c) => (a.repin ? directory.repinByHand(key, to, 'torture', c) : directory.set(key, to, 'ops@example.com', c)));
          log.push(`${what}: version ${entry.version}`);
        }
      } catch (err) {
        log.push(`${what}: refused: ${err instanceof Error ? `${err.name}: ${err.message.slice(0, 240)}` : String(err)}`);
      }
      return;
    }
    const slot = slots[a.slot] as number;
    const current = await env.slotMaps.current();
    const from = current.assignments[slot] as string;
    const to = SHARDS[(SHARDS.indexOf(from) + a.to) % SHARDS.length] as string;
    if (a.kind === 'checked') {
      try {
        const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
        const record = await store.publishByHand(moveSlots(current, [slot], to), 'torture recovery by hand', env.catalog, { rowsLeftOn: 'checked' });
        log.push(`publishByHand (rowsLeftOn 'checked') slot ${slot} ${from} -> ${to}: version ${record.map.version}`);
      } catch (err) {
        log.push(`publishByHand (rowsLeftOn 'checked') slot ${slot} ${from} -> ${to}: refused: ${err instanceof Error ? `${err.name}: ${err.message.slice(0, 240)}` : String(err)}`);
      }
      return;
    }
    if (a.kind === 'move') {
      try {
        const mover = env.mover({ readerGraceMs: 0 });
        const ended = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'torture' })).id);
        log.push(`move of slot ${slot} ${from} -> ${to}: ${ended.state}${ended.error ? ` (${ended.error.slice(0, 200)})` : ''}`);
      } catch (err) {
        log.push(`move of slot ${slot} ${from} -> ${to}: refused: ${err instanceof Error ? err.message.slice(0, 240) : String(err)}`);
      }
    } else {
      try {
        const record = await byHand(a.how, from, ({ slotMaps }, c) => slotMaps.publishByHand(moveSlots(current, [slot], to), 'torture hand change', c));
        log.push(`publishByHand (${a.how}) slot ${slot} ${from} -> ${to}: version ${record.map.version}`);
      } catch (err) {
        log.push(`publishByHand (${a.how}) slot ${slot} ${from} -> ${to}: refused: ${err instanceof Error ? `${err.name}: ${err.message.slice(0, 240)}` : String(err)}`);
      }
    }
  }

  /** The users an action changes the owner of, emptied first (a change with no rows to count goes through). */
  function emptied(a: Action): Array<[number, number]> {
    if (a.kind === 'both') return [...emptied(a.first), ...emptied(a.second)];
    if (a.kind === 'publish' || a.kind === 'checked') return [0, 1, 2].map((u) => [a.slot, u]);
    if (a.kind === 'pin' || a.kind === 'unpin' || a.kind === 'sqlunpin') return [[a.slot, a.user]];
    return [];
  }

  for (const step of steps) {
    const past = pastIn(step.action);
    log.push(`-- step: ${JSON.stringify(step.action)}${step.empty || past ? ' (emptied first)' : ''}`);
    if (step.empty || past) {
      const deletes = emptied(step.action)
        .filter(([s, u]) => model[s]?.[u]?.exists)
        .map(([s, u]) => ({ writer: u % 3, slot: s, user: u, op: 'delete' as const }));
      await runModelWrites(ctx, deletes);
    }
    if (past) {
      // The operator's recovery: no write while it is made, then every router given the routes it
      // leaves (its stale ones would write where the unit was, which nothing fences: the caller's word).
      await runAction(step.action);
      const latest = await env.slotMaps.current();
      versions.splice(0, versions.length, latest);
      for (const w of writers.keys()) writers[w] = staleWriter(env, latest);
      log.push(`routers given map version ${latest.version} and fresh directory caches`);
      await runModelWrites(ctx, step.writes);
      continue;
    }
    await Promise.all([runAction(step.action), runModelWrites(ctx, step.writes)]);
    const latest = await env.slotMaps.current();
    if (latest.version !== versions.at(-1)?.version) versions.push(latest);
  }
  log.push(...refusedMeanwhile.map((r) => `(allowed meanwhile) ${r}`));
  // What a schedule leaves is settled by the review: twice, as a key's row waits for its slot's.
  await review('final review');
  await review('final review again');

  const map = await env.slotMaps.current();
  for (const [i, slot] of slots.entries()) {
    for (const [u, m] of (model[i] as UserModel[]).entries()) {
      const key = keys[i]?.[u] as string;
      const owner = await routeOf(key, slot);
      violations.push(...(await placementViolations(env, `s${i}u${u}`, key, owner, m)));
      // Liveness: once reviewed, a fresh writer writes the key on its owner.
      try {
        const wrote = await staleWriter(env, map, 0, 2_000).withShardWrite(key, async ({ client }) =>
          m.exists
            ? client.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'probe', '{}'::jsonb)`, [key, slot])
            : client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'p@example.com', 'probe')`, [key, slot]),
        );
        if (wrote.shardId !== owner) violations.push(`a fresh write of s${i}u${u} landed on ${wrote.shardId}, owner ${owner}`);
        const pool = env.shards.get(wrote.shardId);
        await pool?.query(`delete from documents where owner_id = $1 and title = 'probe'`, [key]);
        if (!m.exists) await pool?.query('delete from users where id = $1', [key]);
      } catch (err) {
        violations.push(`a fresh write of s${i}u${u} on its owner ${owner} was refused once reviewed: ${String(err)}`);
      }
    }
  }
  return { violations, log };
}

describe('the review of the fence rows, interleaved with hand changes, moves and writers with stale routes (issue #15)', () => {
  it('acknowledges no write where the catalog does not route its key, and refuses none for good once reviewed', async () => {
    const runs = Number(process.env['TORTURE_RUNS'] ?? 4);
    const seed = process.env['TORTURE_SEED'] === undefined ? undefined : Number(process.env['TORTURE_SEED']);
    let next = 2400;
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 3, maxLength: 8 }), async (steps) => {
        const slots: [number, number] = [next, next + 1];
        next += 2;
        const { violations, log } = await runSchedule(slots, steps);
        if (violations.length > 0 || process.env['TORTURE_LOG'] === '1') console.log(`slots ${slots.join(', ')}:\n${log.join('\n')}\nVIOLATIONS:\n${violations.join('\n')}`);
        expect(violations).toEqual([]);
      }),
      { numRuns: runs, endOnFailure: true, ...(seed === undefined ? {} : { seed }) },
    );
  }, 900_000);
});
