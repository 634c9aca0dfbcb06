/**
 * `ca-dms-scaling shards fences --local` (issue #15): the review pointed at local mode's running
 * cluster instead of --catalog-url/--shard. Local mode's servers take fresh ports at every start,
 * so the command finds them as the cluster left them: its manifest (`cluster.json`, the layout and
 * the password) and each server's `postmaster.pid` (port, pid, status). It reviews with local
 * mode's routing (the one `start` recorded in `<dataDir>/routing.json`; without it hash_based, pins
 * routing their keys), so a key's directory rows are settled too. A review shell whose sharding
 * variables disagree with the recorded routing is refused.
 * Refused, naming the flag: --local with --catalog-url or --shard. Said plainly, exit 1: no
 * cluster there, a manifest that names servers that are not there, servers stopped, or a
 * `postmaster.pid` left by a server that died.
 */
import { spawnSync } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError, type CliIo } from '../../../bin/commands/kit.js';
import { createShardsCommand } from '../../../bin/commands/shards.js';
import { startEmbeddedCluster, type EmbeddedCluster } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { keysInSlot } from '../sharding/fixtures/move-env.js';
import { writeLocalRouting } from '../../../functions/local/routing-file.js';

/**
 * A one-connection pool whose clients keep an error listener after the pool lets them go:
 * `pool.end()` resolves before their sockets close, and the last test stops the servers, whose
 * "terminating connection due to administrator command" then reached a client with no listener
 * (an uncaught exception failing the run).
 */
function quietPool(url: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  pool.on('error', () => undefined);
  pool.on('connect', (client) => client.on('error', () => undefined));
  return pool;
}

let base: string;
let cluster: EmbeddedCluster;
beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'ca-dms-fences-local-'));
  // The servers run as the postgres OS user when we are root: it must traverse the directory.
  await chmod(base, 0o755);
  cluster = await startEmbeddedCluster({ root: join(base, 'pg'), shards: 2, replicasPerShard: 0 });
  const catalog = quietPool(cluster.catalogUrl);
  const shards = cluster.shards.map((s) => quietPool(s.primaryUrl));
  try {
    // What local mode's start does before it serves: migrations, then the first slot map.
    await migrateAll({ catalog, shards });
    await new SlotMapStore(catalog).initialise(buildSlotMap(cluster.shards.map((s) => ({ shardId: s.shardId, weight: 1 }))), 'test', 'local mode');
  } finally {
    await Promise.all([catalog.end(), ...shards.map((p) => p.end())]);
  }
}, 180_000);
afterAll(async () => {
  await cluster?.stop();
  if (base !== undefined) await rm(base, { recursive: true, force: true });
});

function capture(): { io: CliIo; out: string[] } {
  const out: string[] = [];
  return { io: { stdout: (t) => out.push(t), stderr: () => undefined, cwd: base }, out };
}

/** The command as an operator's shell would run it: no database variables set. */
const fences = (...args: string[]): Promise<number> => createShardsCommand({}).run(['fences', ...args], capture().io);

describe('shards fences --local', () => {
  it("reviews the running local cluster without any URL, with local mode's routing: a key's fenced row left by a pin change is settled", async () => {
    const slot = 77;
    const [key] = keysInSlot(slot, 1) as [string];
    const catalog = new pg.Client({ connectionString: cluster.catalogUrl });
    await catalog.connect();
    const owner = (await catalog.query<{ owner: string }>('select assignments[$1::int + 1] as owner from catalog.slot_maps order by version desc limit 1', [slot])).rows[0]?.owner as string;
    await catalog.end();
    const shard = cluster.shards.find((s) => s.shardId === owner) as { primaryUrl: string };
    const pool = quietPool(shard.primaryUrl);
    try {
      // What a pin change killed between its fence and its put-back leaves where the key still routes (by hash).
      await pool.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
      const listed = capture();
      expect(await createShardsCommand({}).run(['fences', '--local', '--data-dir', '.'], listed.io)).toBe(1);
      expect(listed.out.join('')).toMatch(new RegExp(`^slot map version 1; 1 row\\(s\\) listed`));
      expect(listed.out.join('')).toMatch(new RegExp(`${owner}  directory ${key}  fenced  job -  moved_to -  map_version 0  owner ${owner}  route ${owner}  age \\d+ s\\n +left fenced by a hand change of the key's pin that did not finish.*\\n +action: reopen \\(withheld: last written`));
      const settled = capture();
      expect(await createShardsCommand({}).run(['fences', '--local', '--data-dir', base, '--settle', '--older-than', '0'], settled.io)).toBe(0);
      expect(settled.out.join('')).toContain(`settled: reopened (deleted), ${owner} takes the key's writes`);
      expect((await pool.query(`select 1 from write_fences where kind = 'directory' and unit_id = $1`, [key])).rows).toHaveLength(0);
    } finally {
      await pool.end();
    }
  }, 60_000);

  it('judges by the routing start recorded, not by the review shell\'s variables; refuses a shell that disagrees; names a broken record', async () => {
    const slot = 78;
    const [key] = keysInSlot(slot, 1) as [string];
    const routingPath = join(base, 'routing.json');
    const shard = cluster.shards[0] as { shardId: string; primaryUrl: string };
    const pool = quietPool(shard.primaryUrl);
    try {
      await pool.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
      // Local mode started with SHARDING_ENABLED=false: every key routes to the default shard, so
      // the review cannot settle the row by pin or slot (a shell without the variable would have
      // judged it by hash and reopened it).
      await writeLocalRouting(base, { strategy: 'hash_based', overrideHash: true, fallback: 'hash', enabled: false });
      const listed = capture();
      expect(await createShardsCommand({}).run(['fences', '--local', '--data-dir', base, '--settle', '--older-than', '0'], listed.io)).toBe(1);
      expect(listed.out.join('')).toContain(`sharding is disabled (SHARDING_ENABLED=false in the environment local mode was started with, recorded in ${routingPath}): every key routes to default_shard, whatever its pin or slot; decide by hand`);
      expect((await pool.query(`select state from write_fences where kind = 'directory' and unit_id = $1`, [key])).rows).toEqual([{ state: 'fenced' }]);

      // This shell says enabled: which routing is meant cannot be told.
      await expect(createShardsCommand({ SHARDING_ENABLED: 'true' }).run(['fences', '--local', '--data-dir', base], capture().io)).rejects.toThrow(
        new UsageError(
          `--local: SHARDING_ENABLED in this shell gives hash_based (override_hash on, fallback hash), but local mode under ${base} was started with hash_based (override_hash on, fallback hash, sharding disabled), which its routers use: unset it (or set it as start had it) and run again`,
        ),
      );
      // The same value as start had: accepted.
      const same = capture();
      expect(await createShardsCommand({ SHARDING_ENABLED: 'false' }).run(['fences', '--local', '--data-dir', base], same.io)).toBe(1);
      expect(same.out.join('')).toContain(`sharding is disabled (SHARDING_ENABLED=false in the environment local mode was started with, recorded in ${routingPath}):`);

      await writeFile(routingPath, '{"strategy": "consistent"');
      await expect(fences('--local', '--data-dir', base)).rejects.toThrow(new RegExp(`^--local: ${routingPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not valid JSON .*; start local mode again to rewrite it$`));
      await writeFile(routingPath, '{"strategy": "consistent", "overrideHash": true, "fallback": "hash"}');
      await expect(fences('--local', '--data-dir', base)).rejects.toThrow(`--local: ${routingPath}: strategy: `);
    } finally {
      await rm(routingPath, { force: true });
      await pool.query(`delete from write_fences where kind = 'directory' and unit_id = $1`, [key]);
      await pool.end();
    }
  }, 60_000);

  it('refuses --local with --catalog-url or --shard, and --data-dir without --local, naming the flag', async () => {
    await expect(fences('--local', '--catalog-url', cluster.catalogUrl)).rejects.toThrow(
      new UsageError("--local: cannot be combined with --catalog-url: --local reviews local mode's running cluster, whose catalog and shards its manifest names; drop one of them"),
    );
    await expect(fences('--local', '--shard', `shard_001=${cluster.shards[0]?.primaryUrl ?? ''}`)).rejects.toThrow(/^--local: cannot be combined with --shard: /);
    await expect(fences('--data-dir', base, '--catalog-url', cluster.catalogUrl)).rejects.toThrow(new UsageError('--data-dir: only with --local (the directory local mode runs in)'));
  });

  it('says where no local cluster was ever started', async () => {
    const empty = await mkdtemp(join(tmpdir(), 'ca-dms-fences-none-'));
    try {
      await expect(fences('--local', '--data-dir', empty)).rejects.toThrow(`--local: no local cluster in ${join(empty, 'pg')}: it has no cluster.json (local mode never started there).`);
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });

  it('says when the manifest is stale: it names a server whose data is not there', async () => {
    const path = join(base, 'pg', 'cluster.json');
    const manifest = await readFile(path, 'utf8');
    try {
      await writeFile(path, manifest.replace(/"shards": 2/, '"shards": 3'));
      await expect(fences('--local', '--data-dir', base)).rejects.toThrow(
        `--local: the local cluster's manifest ${path} is stale: it describes 3 shard(s), and ${join(base, 'pg', 'shard_003', 'primary')} (shard_003/primary) is missing or not a data directory.`,
      );
    } finally {
      await writeFile(path, manifest);
    }
  });

  it('says when local mode is not running: its servers stopped, or a postmaster.pid left by one that died', async () => {
    await cluster.stop();
    const pidFile = join(base, 'pg', 'catalog', 'postmaster.pid');
    await expect(fences('--local', '--data-dir', base)).rejects.toThrow(`--local: local mode is not running in ${join(base, 'pg')}: catalog's server is stopped (no ${pidFile}).`);
    const gone = spawnSync('true').pid;
    await writeFile(pidFile, `${gone}\n${join(base, 'pg', 'catalog')}\n0\n5432\n\n127.0.0.1\n0 0\nready\n`);
    await expect(fences('--local', '--data-dir', base)).rejects.toThrow(`--local: local mode is not running in ${join(base, 'pg')}: ${pidFile} names pid ${gone}, which is not catalog's server (it died without removing the file).`);
  }, 60_000);
});
