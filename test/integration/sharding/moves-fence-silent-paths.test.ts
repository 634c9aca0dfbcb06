/**
 * Variants of the silent shard (see moves-fence-silent-shard.test.ts): the source's path goes
 * silent while it is fenced (the run's own unfence then waits on it), and the target fails over
 * while fenced (its connections reset, its old address black-holed: a new connection never
 * completes). Either way the run must end within a bound of the fence budget, not hang with the
 * lease renewed until the function is killed.
 *
 * Original note: the target's connection goes silent (no reset: a black-holed network path, a
 * failover whose old address stops answering) while the mover holds the source's write fence.
 * The fence budget promises writes to the unit are held at most `fenceBudgetMs`; on Lambda a hung
 * run holds them until the function's timeout (15 min) kills it and the next tick reopens them.
 */
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ListeningClient } from '../../../functions/adapters/postgres/listening-client.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/** A TCP relay that can stop relaying without closing anything (a black hole). */
class Relay {
  private silent = false;
  private readonly sockets = new Set<net.Socket>();
  private server?: net.Server;
  port = 0;

  constructor(private readonly upstreamPort: number) {}

  async start(): Promise<void> {
    this.server = net.createServer((client) => {
      this.sockets.add(client);
      client.on('error', () => undefined);
      if (this.silent) return;
      const upstream = net.connect(this.upstreamPort, '127.0.0.1');
      this.sockets.add(upstream);
      upstream.on('error', () => undefined);
      client.on('data', (d) => {
        if (!this.silent) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!this.silent) client.write(d);
      });
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.port = (this.server?.address() as net.AddressInfo).port;
  }

  blackhole(): void {
    this.silent = true;
  }

  /** A failover: open connections reset, the old address then answers nothing. */
  failOver(): void {
    this.silent = true;
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

let env: MoveEnv;
const pools: pg.Pool[] = [];
const relays: Relay[] = [];
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  for (const r of relays) await r.stop();
  await Promise.race([Promise.all(pools.map((p) => p.end().catch(() => undefined))), delay(5000)]);
  await Promise.race([env?.stop(), delay(20_000)]);
}, 60_000);

async function fenceState(pool: pg.Pool, slot: number): Promise<string | undefined> {
  const { rows } = await pool.query<{ state: string }>(`select state from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  return rows[0]?.state;
}

async function relayedPool(url: string): Promise<{ relay: Relay; pool: pg.Pool }> {
  const u = new URL(url);
  const relay = new Relay(Number(u.port));
  relays.push(relay);
  await relay.start();
  u.port = String(relay.port);
  const pool = new pg.Pool({ connectionString: u.toString(), max: 4, Client: ListeningClient });
  pool.on('error', () => undefined);
  pools.push(pool);
  return { relay, pool };
}

async function runUntilSilent(slot: number, side: 'source' | 'target', how: 'blackhole' | 'failOver'): Promise<{ outcome: string; planned: number }> {
  const { from, to, source, target } = await sides(env, slot);
  await seedUsers(source, slot, keysInSlot(slot, 3), 2);
  const relayed = await relayedPool(env.urls.shards[side === 'source' ? from : to] as string);
  const mover = env.mover({
    shards: new Map([
      [from, side === 'source' ? relayed.pool : source],
      [to, side === 'target' ? relayed.pool : target],
    ]),
    fenceBudgetMs: 1000,
    hook: (point) => {
      if (point === 'fenced') relayed.relay[how]();
    },
  });
  const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
  const run = mover.run(planned.id, { until: Date.now() + 60_000 }).then(
    (j) => `ended: ${j.state}`,
    (e: Error) => `threw: ${e.message}`,
  );
  let fenced = false;
  for (let i = 0; i < 400 && !fenced; i++) {
    if ((await fenceState(source, slot)) === 'fenced') fenced = true;
    else await delay(25);
  }
  expect(fenced).toBe(true);
  // Fifteen budgets later (the budget, its 5 s slack, and the unfence's own bound).
  const ran = await Promise.race([run, delay(15_000).then(() => 'still running 15 s after the fence')]);
  const outcome = `${ran} (source fence ${(await fenceState(source, slot)) ?? '-'})`;
  await relayed.relay.stop();
  await Promise.race([run, delay(5000)]);
  return { outcome, planned: planned.id };
}

describe('a shard silent while the source is fenced: the run ends', () => {
  it("ends the run when the source's path goes silent under the fence (its unfence must not wait for ever)", async () => {
    const { outcome } = await runUntilSilent(631, 'source', 'blackhole');
    expect(outcome).toMatch(/^(threw|ended)/);
  }, 60_000);

  it('ends the run when the target fails over under the fence (a new connection to the old address never completes)', async () => {
    const { outcome } = await runUntilSilent(632, 'target', 'failOver');
    expect(outcome).toMatch(/^(threw|ended).*\(source fence open\)$/);
  }, 60_000);
});
