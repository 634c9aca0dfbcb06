/**
 * Routing benchmark: our slot router (MurmurHash3 mod 4096 + versioned slot map) side by side
 * with the `hashring` npm package (libketama-compatible consistent hashing, md5, 160 points per
 * server) on the same UUID keys:
 *
 * 1. throughput of one `route()` call on one thread (goal: at least 5 million routes/s);
 * 2. load balance over 1 million keys on four equal shards (max over mean; 1.0 is perfect);
 * 3. the share of keys that move when a fifth shard joins four (the optimum is 1/5).
 *
 * Run: `npm run bench:routing` (options: `--keys N` keys for balance/movement, default 1000000;
 * `--rounds N` timed rounds, default 5).
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { parseShardingConfig } from '../functions/core/sharding/config.js';
import { slotOf } from '../functions/core/sharding/hash.js';
import { ShardRouter } from '../functions/core/sharding/router.js';
import { addShard, buildSlotMap } from '../functions/core/sharding/slot-map.js';

interface Ring {
  get(key: string): string;
}
// hashring is CommonJS without type declarations; this is the slice of its API we use.
const HashRing = createRequire(import.meta.url)('hashring') as new (servers: string[]) => Ring;

const GOAL_ROUTES_PER_SECOND = 5_000_000;
const THROUGHPUT_SAMPLE = 200_000;

const { values } = parseArgs({ options: { keys: { type: 'string', default: '1000000' }, rounds: { type: 'string', default: '5' } } });
const opts = z
  .object({ keys: z.coerce.number().int().min(1000).max(20_000_000), rounds: z.coerce.number().int().min(1).max(50) })
  .safeParse(values);
if (!opts.success) {
  console.error(`bench:routing: ${opts.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  process.exit(2);
}
const { keys: KEY_COUNT, rounds: ROUNDS } = opts.data;

/** Deterministic version-4-shaped UUIDs (mulberry32), so every run hashes the same keys. */
function uuids(n: number, seed = 0x9e3779b9): string[] {
  let state = seed | 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
  const hex = (v: number, len: number): string => v.toString(16).padStart(8, '0').slice(8 - len);
  const out: string[] = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const b = next();
    const c = next();
    out[i] = `${hex(next(), 8)}-${hex(b >>> 16, 4)}-4${hex(b, 3)}-${hex(8 | (c >>> 30), 1)}${hex(c, 3)}-${hex(c >>> 12, 4)}${hex(next(), 8)}`;
  }
  return out;
}

const FOUR = ['shard_001', 'shard_002', 'shard_003', 'shard_004'];
const FIVE = [...FOUR, 'shard_005'];
const config = parseShardingConfig({
  shards: FIVE.map((id, i) => ({ shard_id: id, database_url: `postgresql://bench@127.0.0.1:${5432 + i}/ca_dms` })),
  default_shard: 'shard_001',
});
const map4 = buildSlotMap(FOUR.map((shardId) => ({ shardId, weight: 1 })));
const map5 = addShard(map4, 'shard_005', 1);
const router4 = new ShardRouter(config, map4);
const router5 = new ShardRouter(config, map5);
const ring4 = new HashRing(FOUR);
const ring5 = new HashRing(FIVE);

interface Throughput {
  /** Calls per second of wall time, best round. */
  wall: number;
  /** Calls per second of this process's CPU time, best round: what one thread achieves when the machine is shared. */
  cpu: number;
  sink: number;
}

/** Best-of-rounds throughput of `fn` over `keys` (after one warm-up pass). */
function throughput(keys: readonly string[], rounds: number, fn: (k: string) => unknown): Throughput {
  let sink = 0;
  for (let i = 0; i < keys.length; i++) if (fn(keys[i] as string) !== undefined) sink++;
  let wall = 0;
  let cpu = 0;
  for (let r = 0; r < rounds; r++) {
    const cpuStart = process.cpuUsage();
    const start = process.hrtime.bigint();
    for (let i = 0; i < keys.length; i++) if (fn(keys[i] as string) !== undefined) sink++;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const used = process.cpuUsage(cpuStart);
    wall = Math.max(wall, keys.length / seconds);
    cpu = Math.max(cpu, keys.length / ((used.user + used.system) / 1e6));
  }
  return { wall, cpu, sink };
}

function balance(owners: readonly string[]): number {
  const counts = new Map<string, number>();
  for (const o of owners) counts.set(o, (counts.get(o) ?? 0) + 1);
  return Math.max(...counts.values()) / (owners.length / counts.size);
}

function moved(before: readonly string[], after: readonly string[]): { share: number; allToNew: boolean } {
  let n = 0;
  let toNew = 0;
  after.forEach((a, i) => {
    if (before[i] !== a) {
      n++;
      if (a === 'shard_005') toNew++;
    }
  });
  return { share: n / after.length, allToNew: n === toNew };
}

const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;

console.log(`routing benchmark: ${fmt(KEY_COUNT)} distinct UUID keys, best of ${ROUNDS} rounds, Node ${process.version}, one thread, load average ${os.loadavg()[0]?.toFixed(1)} on ${os.availableParallelism()} CPUs\n`);
const keys = uuids(KEY_COUNT);
// hashring hashes with md5 through node:crypto, about 20x slower: time it on a sample so the
// benchmark stays short; its 5000-entry LRU cache cannot help on distinct keys.
const sample = keys.slice(0, Math.min(keys.length, THROUGHPUT_SAMPLE));

const ours = throughput(keys, ROUNDS, (k) => router4.route(k).shardId);
const slotsOnly = throughput(keys, ROUNDS, (k) => slotOf(k));
const ring = throughput(sample, Math.min(ROUNDS, 3), (k) => ring4.get(k));

const ours4 = keys.map((k) => router4.route(k).shardId);
const ours5 = keys.map((k) => router5.route(k).shardId);
const ring4Owners = keys.map((k) => ring4.get(k));
const ring5Owners = keys.map((k) => ring5.get(k));
const oursBalance = balance(ours4);
const ringBalance = balance(ring4Owners);
const oursMoved = moved(ours4, ours5);
const ringMoved = moved(ring4Owners, ring5Owners);

const rows: [string, string, string][] = [
  ['', 'slot router (murmur3 % 4096)', 'hashring (ketama, md5)'],
  ['routes per CPU-second, one thread', fmt(ours.cpu), fmt(ring.cpu)],
  ['routes per wall-second', fmt(ours.wall), fmt(ring.wall)],
  ['  hash + slot only, per CPU-second', fmt(slotsOnly.cpu), '-'],
  ['balance, 4 shards (max/mean)', oursBalance.toFixed(4), ringBalance.toFixed(4)],
  ['keys moved when a 5th joins', pct(oursMoved.share), pct(ringMoved.share)],
  ['  all moved keys go to the new shard', String(oursMoved.allToNew), String(ringMoved.allToNew)],
];
const w0 = Math.max(...rows.map((r) => r[0].length));
const w1 = Math.max(...rows.map((r) => r[1].length));
for (const [a, b, c] of rows) console.log(`${a.padEnd(w0)}  ${b.padStart(w1)}  ${c.padStart(24)}`);

const met = ours.cpu >= GOAL_ROUTES_PER_SECOND;
console.log(`\ngoal: >= ${fmt(GOAL_ROUTES_PER_SECOND)} routes/s on one thread: ${fmt(ours.cpu)} per CPU-second (${fmt(ours.wall)} per wall-second) -> ${met ? 'MET' : 'NOT MET'}; ${(ours.cpu / ring.cpu).toFixed(1)}x hashring`);
console.log(`moved share when a 5th shard joins 4: optimum 20.00%, slot router ${pct(oursMoved.share)} (${diffSlots()} of 4096 slots), hashring ${pct(ringMoved.share)}`);
console.log(`balance: slot router ${oursBalance.toFixed(4)} vs hashring ${ringBalance.toFixed(4)} (1.0000 is perfect)`);
if (ours.sink + slotsOnly.sink + ring.sink < 0) console.log('unreachable: keeps the timed calls observable');

function diffSlots(): number {
  return map4.assignments.filter((id, slot) => map5.assignments[slot] !== id).length;
}
