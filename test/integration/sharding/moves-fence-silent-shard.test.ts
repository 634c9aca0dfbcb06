/**
 * The target's connection goes silent (no reset: a black-holed network path, a
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

describe("the target's connection goes silent while the source is fenced", () => {
  it('gives the fence up within a bound of its budget, so writes to the unit are not held until the function is killed', async () => {
    const slot = 630;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const targetUrl = new URL(env.urls.shards[to] as string);
    const relay = new Relay(Number(targetUrl.port));
    relays.push(relay);
    await relay.start();
    targetUrl.port = String(relay.port);
    const relayed = new pg.Pool({ connectionString: targetUrl.toString(), max: 1, Client: ListeningClient });
    relayed.on('error', () => undefined);
    pools.push(relayed);
    const mover = env.mover({
      shards: new Map([
        [from, source],
        [to, relayed],
      ]),
      fenceBudgetMs: 1000,
      hook: (point) => {
        if (point === 'fenced') relay.blackhole();
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    let fencedAt = 0;
    const run = mover.run(planned.id, { until: Date.now() + 60_000 }).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    for (let i = 0; i < 400 && fencedAt === 0; i++) {
      if ((await fenceState(source, slot)) === 'fenced') fencedAt = Date.now();
      else await delay(25);
    }
    expect(fencedAt).toBeGreaterThan(0);

    // Ten budgets later.
    await delay(10_000);
    const state = await fenceState(source, slot);
    const outcome = await Promise.race([run, delay(10).then(() => 'still running')]);

    expect({ state, outcome }).toEqual({ state: 'open', outcome: expect.stringMatching(/^(threw|ended)/) as unknown as string });
    await relay.stop();
    await Promise.race([run, delay(5000)]);
    // Resumed over a healthy connection, the move finishes.
    expect((await env.mover().run(planned.id)).state).toBe('done');
  }, 60_000);
});
