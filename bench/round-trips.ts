/**
 * Round-trip benchmark of the sharded write and read transactions: `--n` writes (`withShardWrite`,
 * one upsert each), then `--n` reads (`withShardRead` on the primary, one lookup each), then `--n`
 * token reads (the same, with the write's read token: on the primary, which checks the token),
 * one at a time, with a request deadline, on loopback against one embedded PostgreSQL shard, per
 * round. With `--before DIR` every round also runs the code of another checkout (the same files
 * under `DIR/functions`, e.g. `git archive HEAD~1 functions | tar -x -C DIR`: its write and read
 * transactions and its replica reader), interleaved with this one's in blocks of 50 operations,
 * so that both see the same machine load. Printed: the round trips of a write, a read and a token
 * read of each (counted on the wire by test/support/pg-wire-recorder.ts over a few extra
 * operations), the mean and p50/p99 latency per round and implementation, and the median of those
 * over the rounds.
 * Loopback hides most of a round trip's cost: on a network, multiply the round trips saved by the
 * RTT (0.2-1 ms within an AZ, more across AZs or through RDS Proxy).
 *
 * Run: `npm run bench:round-trips` (options: `--n N`, default 3000; `--rounds N`, default 3;
 * `--deadline-ms N`, default 5000; `--before DIR`).
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { keySlot } from '../functions/core/sharding/keys.js';
import { parseShardingConfig } from '../functions/core/sharding/config.js';
import type { ReplicaReader } from '../functions/adapters/postgres/replica-reader.js';
import type * as ReaderModule from '../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../functions/adapters/postgres/shard-pools.js';
import type * as WriteModule from '../functions/adapters/postgres/write-transaction.js';
import type * as ReadModule from '../functions/adapters/postgres/read-transaction.js';
import type { ReadToken } from '../functions/core/sharding/read-token.js';
import { startMoveEnv } from '../test/integration/sharding/fixtures/move-env.js';
import { startPgWireRecorder } from '../test/support/pg-wire-recorder.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '3000' },
    rounds: { type: 'string', default: '3' },
    'deadline-ms': { type: 'string', default: '5000' },
    before: { type: 'string' },
  },
});
const options = z
  .object({
    n: z.coerce.number().int().min(1),
    rounds: z.coerce.number().int().min(1),
    deadlineMs: z.coerce.number().int().min(1),
    before: z.string().min(1).optional(),
  })
  .parse({ n: values.n, rounds: values.rounds, deadlineMs: values['deadline-ms'], before: values.before });

interface Impl {
  readonly name: string;
  readonly write: typeof WriteModule;
  readonly read: typeof ReadModule;
  readonly reader: typeof ReaderModule;
}

async function implAt(name: string, root: string): Promise<Impl> {
  const dir = resolve(root, 'functions/adapters/postgres');
  return {
    name,
    write: (await import(resolve(dir, 'write-transaction.ts'))) as typeof WriteModule,
    read: (await import(resolve(dir, 'read-transaction.ts'))) as typeof ReadModule,
    reader: (await import(resolve(dir, 'replica-reader.ts'))) as typeof ReaderModule,
  };
}

const impls: Impl[] = [];
if (options.before !== undefined) impls.push(await implAt('before', options.before));
impls.push(await implAt('this checkout', resolve(import.meta.dirname, '..')));

const env = await startMoveEnv({ shards: 1 });
const shardId = [...env.shards.keys()][0] as string;
const url = env.urls.shards[shardId] as string;
const recorder = await startPgWireRecorder(Number(new URL(url).port));
const poolsFor = (u: string): ShardPools => ShardPools.fromConfig(parseShardingConfig({ shards: [{ shard_id: shardId, database_url: u }], default_shard: shardId }), { max: 1 });
const pools = poolsFor(url);
const recorded = poolsFor(`postgresql://${new URL(url).username}:${new URL(url).password}@127.0.0.1:${recorder.port}${new URL(url).pathname}`);
const readerOptions = { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000 };
/** Every reader made, stopped at the end. */
const replicaReaders: ReplicaReader[] = [];
const readerOf = (impl: Impl, over: ShardPools): ReplicaReader => {
  const reader = new impl.reader.ReplicaReader(over, readerOptions);
  replicaReaders.push(reader);
  return reader;
};

const router = {
  routeForWrite: (key: string) => Promise.resolve({ shardId, slot: keySlot(key), version: 1, viaDirectory: false }),
};
const keys = Array.from({ length: options.n }, () => randomUUID());

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
}

interface Figures {
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

function figures(ms: number[]): Figures {
  const sorted = [...ms].sort((a, b) => a - b);
  return { meanMs: ms.reduce((a, b) => a + b, 0) / ms.length, p50Ms: quantile(sorted, 0.5), p99Ms: quantile(sorted, 0.99) };
}

interface Ops {
  write(key: string): Promise<void>;
  read(key: string): Promise<void>;
  tokenRead(key: string): Promise<void>;
}

function opsOf(impl: Impl, over: ShardPools): Ops {
  const writer = impl.write.createShardWriter({ router, primaries: new Map([[shardId, over.primary(shardId).pool]]) });
  const reads = impl.read.createShardReader({ router, reader: readerOf(impl, over) });
  /** The read token of each key's last write. */
  const tokens = new Map<string, ReadToken>();
  return {
    async write(key) {
      const { readToken } = await writer.withShardWrite(
        key,
        ({ client, slot }) =>
          client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4) on conflict (id) do update set display_name = excluded.display_name', [key, slot, `${key}@example.org`, 'bench']),
        { deadlineMs: options.deadlineMs },
      );
      tokens.set(key, readToken);
    },
    async read(key) {
      const { value } = await reads.withShardRead(key, async ({ client }) => (await client.query('select display_name from users where id = $1', [key])).rowCount, { deadlineMs: options.deadlineMs, primary: true });
      if (value !== 1) throw new Error(`read of ${key} found ${value} rows, expected 1`);
    },
    async tokenRead(key) {
      const token = tokens.get(key);
      if (token === undefined) throw new Error(`no write of ${key} before its token read`);
      const { value } = await reads.withShardRead(key, async ({ client }) => (await client.query('select display_name from users where id = $1', [key])).rowCount, { deadlineMs: options.deadlineMs, token });
      if (value !== 1) throw new Error(`token read of ${key} found ${value} rows, expected 1`);
    },
  };
}

/**
 * One round: `n` writes, then `n` reads, by every implementation, in blocks of {@link BLOCK}
 * operations that alternate between them (the order reversed every block), so that a burst of
 * load on the shared machine falls on all of them alike.
 */
const BLOCK = 50;
async function round(ops: ReadonlyMap<string, Ops>, n: number): Promise<Map<string, { write: Figures; read: Figures; tokenRead: Figures }>> {
  const names = [...ops.keys()];
  const ms = new Map(names.map((name) => [name, { write: [] as number[], read: [] as number[], tokenRead: [] as number[] }]));
  for (const kind of ['write', 'read', 'tokenRead'] as const) {
    for (let from = 0, block = 0; from < n; from += BLOCK, block++) {
      for (const name of block % 2 === 0 ? names : [...names].reverse()) {
        const op = ops.get(name) as Ops;
        const into = ms.get(name)?.[kind] as number[];
        for (const key of keys.slice(from, Math.min(n, from + BLOCK))) {
          const started = performance.now();
          await op[kind](key);
          into.push(performance.now() - started);
        }
      }
    }
  }
  return new Map(names.map((name) => [name, { write: figures(ms.get(name)?.write ?? []), read: figures(ms.get(name)?.read ?? []), tokenRead: figures(ms.get(name)?.tokenRead ?? []) }]));
}

/** Round trips of one write, one read and one token read of `impl`, counted on the wire. */
async function roundTrips(impl: Impl): Promise<{ write: number; read: number; tokenRead: number }> {
  const reader = readerOf(impl, recorded);
  const per = async (work: () => Promise<unknown>): Promise<number> => {
    // Through the reader: a connection's first read on a primary also checks, once, that the
    // server is out of recovery (one more round trip then, none after); not counted here.
    await reader.query(shardId, 'select 1', [], { primary: true });
    recorder.clear();
    const ops = 10;
    for (let i = 0; i < ops; i++) await work();
    return recorder.statements().length / ops;
  };
  const writer = impl.write.createShardWriter({ router, primaries: new Map([[shardId, recorded.primary(shardId).pool]]) });
  const reads = impl.read.createShardReader({ router, reader });
  const key = keys[0] as string;
  const { readToken } = await writer.withShardWrite(key, ({ client }) => client.query('update users set display_name = $2 where id = $1', [key, 'rt']), { deadlineMs: options.deadlineMs });
  return {
    write: await per(() => writer.withShardWrite(key, ({ client }) => client.query('update users set display_name = $2 where id = $1', [key, 'rt']), { deadlineMs: options.deadlineMs })),
    read: await per(() => reads.withShardRead(key, async ({ client }) => (await client.query('select 1 from users where id = $1', [key])).rowCount, { deadlineMs: options.deadlineMs, primary: true })),
    tokenRead: await per(() => reads.withShardRead(key, async ({ client }) => (await client.query('select 1 from users where id = $1', [key])).rowCount, { deadlineMs: options.deadlineMs, token: readToken })),
  };
}

const fmt = (f: Figures): string => `mean ${f.meanMs.toFixed(3)} ms, p50 ${f.p50Ms.toFixed(3)}, p99 ${f.p99Ms.toFixed(3)}`;
try {
  const ops = new Map(impls.map((impl) => [impl.name, opsOf(impl, pools)]));
  // Warm-up: connections opened, catalog caches filled, the rows written once.
  await round(ops, Math.min(500, options.n));
  const trips = new Map<string, { write: number; read: number; tokenRead: number }>();
  for (const impl of impls) trips.set(impl.name, await roundTrips(impl));
  console.log(`round trips per operation (one statement of its own, with a deadline): ${impls.map((i) => `${i.name}: write ${trips.get(i.name)?.write}, read ${trips.get(i.name)?.read}, token read ${trips.get(i.name)?.tokenRead}`).join('; ')}`);
  console.log(`N=${options.n} writes then N reads per round, in blocks of ${BLOCK} alternating between the implementations; deadline ${options.deadlineMs} ms, loopback, ${os.cpus().length} CPUs, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const results = new Map<string, Array<{ write: Figures; read: Figures; tokenRead: Figures }>>();
  for (let r = 1; r <= options.rounds; r++) {
    const figuresOf = await round(ops, options.n);
    for (const [name, f] of figuresOf) {
      results.set(name, [...(results.get(name) ?? []), f]);
      console.log(`round ${r} ${name.padEnd(13)} write ${fmt(f.write)} | read ${fmt(f.read)} | token read ${fmt(f.tokenRead)}`);
    }
    console.log(`  load after round ${r}: ${os.loadavg()[0]?.toFixed(2)}`);
  }
  const median = (xs: number[]): number => quantile([...xs].sort((a, b) => a - b), 0.5);
  for (const impl of impls) {
    const rs = results.get(impl.name) ?? [];
    const w = median(rs.map((x) => x.write.p50Ms));
    const rd = median(rs.map((x) => x.read.p50Ms));
    const tr = median(rs.map((x) => x.tokenRead.p50Ms));
    console.log(
      `median over ${rs.length} rounds, ${impl.name.padEnd(13)} write p50 ${w.toFixed(3)} ms, mean ${median(rs.map((x) => x.write.meanMs)).toFixed(3)} ms | read p50 ${rd.toFixed(3)} ms, mean ${median(rs.map((x) => x.read.meanMs)).toFixed(3)} ms | token read p50 ${tr.toFixed(3)} ms, mean ${median(rs.map((x) => x.tokenRead.meanMs)).toFixed(3)} ms`,
    );
  }
} finally {
  for (const r of replicaReaders) r.stop();
  await pools.end();
  await recorded.end();
  await recorder.close();
  await env.stop();
}
