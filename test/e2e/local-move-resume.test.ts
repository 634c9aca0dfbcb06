/**
 * A slot move in local mode survives the process being killed outright (SIGKILL) part-way, while
 * documents of an owner in that slot are written through the documents API: restarted on the same
 * data directory, local mode resumes the move at once and finishes it, and every acknowledged
 * document is on the shard the map names, exactly once, none left on the old owner, no fence or
 * change capture left behind, and no PostgreSQL process after the last stop.
 *
 * The move's phase is watched in the catalog directly (a client of its own, polling), and the
 * process is frozen (SIGSTOP) as soon as the phase is seen, so it is killed in that phase. Each
 * phase is held open by the test until the kill, so that a busy machine cannot carry the move past
 * it between two polls (it did: a 2-core machine at load 13 saw the first kill land with the source
 * already fenced, the second after the move had finished): the copy by a SHARE lock on the
 * target's documents (its inserts wait); the fence by a trigger on the catalog's slot maps that
 * sleeps (made before the move and kept in the catalog's data across the restarts, dropped once
 * the last run is up): the flip's insert of its map sleeps until its fence budget cancels it, the
 * flip is over budget and the fence is taken again, so the source is fenced for most of each
 * attempt.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, postgresProcessesUnder, startLocalProcess, tempDataDir, type LocalProcess } from './support/local-process.js';

const ARGS = ['--shards', '2', '--replicas', '0', '--seed-users', '0'];
const ENV = { SCALING_CHECK_INTERVAL: '86400' };
const API = '/api/v1/scaling';
const TERMINAL = ['done', 'failed', 'cancelled'];

interface Job {
  state: string;
  fenced: boolean;
}

/** A URL of one server of the run, from the ports its banner prints and the manifest's password. */
async function serverUrl(run: LocalProcess, node: string, database: string): Promise<string> {
  const port = new RegExp(`${node.replace('/', '\\/')}:(\\d+)`).exec(run.output())?.[1];
  if (!port) throw new Error(`no port for ${node} in the output:\n${run.output()}`);
  const { password } = JSON.parse(await readFile(join(run.dataDir, 'pg', 'cluster.json'), 'utf8')) as { password: string };
  return `postgresql://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function readJob(catalog: pg.Client, id: string): Promise<Job> {
  const { rows } = await catalog.query<{ state: string; fenced: boolean }>(
    'select state, fenced_at is not null and (unfenced_at is null or unfenced_at < fenced_at) as fenced from catalog.move_jobs where id = $1',
    [id],
  );
  if (!rows[0]) throw new Error(`no move job ${id}`);
  return rows[0];
}

/**
 * Polls the job until `wanted` holds, then freezes the process at once (SIGSTOP) and kills it
 * (SIGKILL); returns the job as it was when killed (read again after the freeze).
 */
async function killWhen(run: LocalProcess, id: string, wanted: (job: Job) => boolean, giveUpMs: number): Promise<Job> {
  const pid = await run.nodePid();
  return withClient(await serverUrl(run, 'catalog', 'catalog'), async (catalog) => {
    const deadline = Date.now() + giveUpMs;
    for (;;) {
      const job = await readJob(catalog, id);
      if (wanted(job) || TERMINAL.includes(job.state) || Date.now() > deadline) {
        process.kill(pid, 'SIGSTOP');
        const frozen = await readJob(catalog, id);
        process.kill(pid, 'SIGKILL');
        await run.exited;
        return frozen;
      }
    }
  });
}

/**
 * Runs `fn` while a transaction of its own on `url` holds what `hold` takes (statements run in
 * order inside it), then rolls that transaction back.
 */
async function holding<T>(url: string, hold: readonly string[], fn: () => Promise<T>): Promise<T> {
  return withClient(url, async (c) => {
    await c.query('begin');
    try {
      for (const sql of hold) await c.query(sql);
      return await fn();
    } finally {
      await c.query('rollback').catch(() => undefined);
    }
  });
}

/** Every slot map inserted sleeps (a flip's, until its fence budget cancels it): the flips are held. */
const HOLD_FLIPS = `
  create function public.test_hold_flips() returns trigger language plpgsql as $$ begin perform pg_sleep(60); return new; end $$;
  create trigger test_hold_flips before insert on catalog.slot_maps for each row execute function public.test_hold_flips();`;
const RELEASE_FLIPS = 'drop trigger test_hold_flips on catalog.slot_maps; drop function public.test_hold_flips()';

/** Documents written for one owner, one after another, for as long as `running`. */
class Writer {
  readonly acknowledged = new Map<string, string>();
  /** Titles of writes whose outcome the client does not know (an error answer or a cut connection). */
  readonly unknown = new Set<string>();
  running = true;
  private n = 0;
  url = '';
  done: Promise<void> = Promise.resolve();

  constructor(private readonly owner: string) {}

  start(): void {
    this.done = (async () => {
      while (this.running) {
        const title = `resume-${this.n++}`;
        try {
          const res = await fetch(`${this.url}/api/v1/documents`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ owner_id: this.owner, title }),
            signal: AbortSignal.timeout(10_000),
          });
          const body = (await res.json()) as { id?: string };
          if (res.status === 201 && body.id) this.acknowledged.set(body.id, title);
          else this.unknown.add(title);
        } catch {
          this.unknown.add(title);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    })();
  }
}

describe('a move resumed after local mode is killed', () => {
  const runs: LocalProcess[] = [];
  let dataDir = '';

  afterAll(async () => {
    for (const run of runs) await run.stop('SIGKILL');
    if (dataDir) {
      for (const pid of await postgresProcessesUnder(dataDir)) {
        for (const signal of ['SIGCONT', 'SIGKILL'] as const) {
          try {
            process.kill(pid, signal);
          } catch {
            // gone already
          }
        }
      }
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  const start = async (): Promise<LocalProcess> => {
    const run = await startLocalProcess({ dataDir, args: ARGS, env: ENV });
    runs.push(run);
    return run;
  };

  it('finishes the move once restarted, every acknowledged document once on the new owner, nothing fenced or left behind', async () => {
    dataDir = await tempDataDir();
    let run = await start();
    const created = await fetch(`${run.url}/api/v1/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'mover@example.org', display_name: 'Mover' }) });
    const owner = ((await created.json()) as { id: string }).id;
    const route = (await (await fetch(`${run.url}${API}/shards/route?key=${owner}`)).json()) as { shard_id: string; slot: number };
    const from = route.shard_id;
    const to = from === 'shard_001' ? 'shard_002' : 'shard_001';
    const writer = new Writer(owner);
    writer.url = run.url;
    writer.start();
    await eventually(async () => (writer.acknowledged.size >= 20 ? true : undefined), 20_000, 'documents written before the move');

    // Killed once the copy has begun (its inserts on the target held), then (restarted) once the
    // source is fenced (the flip's map held).
    const killedAt: Job[] = [];
    let id = '';
    // Kept in the catalog's data: the killed run's servers stop with it.
    await withClient(await serverUrl(run, 'catalog', 'catalog'), (c) => c.query(HOLD_FLIPS));
    await holding(await serverUrl(run, `${to}/primary`, 'ca_dms'), ['lock table documents in share mode'], async () => {
      const planned = await fetch(`${run.url}${API}/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
      expect(planned.status).toBe(202);
      id = ((await planned.json()) as { id: string }).id;
      killedAt.push(await killWhen(run, id, (j) => j.state !== 'planned', 10_000));
    });
    run = await start();
    writer.url = run.url;
    killedAt.push(await killWhen(run, id, (j) => j.fenced, 30_000));
    run = await start();
    // The flips go on (the drop waits for a held flip's insert to be cancelled, at most its budget).
    await withClient(await serverUrl(run, 'catalog', 'catalog'), (c) => c.query(RELEASE_FLIPS));
    writer.url = run.url;

    let last: unknown;
    const final = await eventually(
      async () => {
        const res = await fetch(`${run.url}${API}/shards/moves/${id}`);
        const job = (await res.json()) as { state: string };
        last = job;
        return TERMINAL.includes(job.state) ? job : undefined;
      },
      30_000,
      'the resumed move to finish',
    ).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; killed at ${JSON.stringify(killedAt)}; the job then: ${JSON.stringify(last)}; output of the last run:\n${run.output().slice(-3000)}`);
    });
    await eventually(async () => (writer.acknowledged.size >= 40 ? true : undefined), 10_000, 'documents written after the move');
    writer.running = false;
    await writer.done;

    const owns = (await (await fetch(`${run.url}${API}/shards/route?key=${owner}`)).json()) as { shard_id: string };
    const ids = [...writer.acknowledged.keys()];
    const counts: Record<string, { acknowledged: number; duplicated: number; ofOwner: number; fencesHeld: number; captures: number }> = {};
    for (const shard of ['shard_001', 'shard_002']) {
      counts[shard] = await withClient(await serverUrl(run, `${shard}/primary`, 'ca_dms'), async (c) => {
        const acknowledged = (await c.query<{ n: number }>('select count(*)::int as n from documents where id = any($1::uuid[])', [ids])).rows[0]?.n ?? -1;
        const duplicated = (await c.query('select title from documents where owner_id = $1 group by title having count(*) > 1', [owner])).rows.length;
        const ofOwner = (await c.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [owner])).rows[0]?.n ?? -1;
        const fencesHeld = (await c.query<{ n: number }>("select count(*)::int as n from write_fences where state in ('fenced', 'incoming')")).rows[0]?.n ?? -1;
        const captures = (await c.query<{ n: number }>('select count(*)::int as n from move_captures')).rows[0]?.n ?? -1;
        return { acknowledged, duplicated, ofOwner, fencesHeld, captures };
      });
    }

    // Killed mid-move both times: during the copy, then with the source's write fence held.
    expect(killedAt.map((j) => ({ terminal: TERMINAL.includes(j.state), fenced: j.fenced }))).toEqual([
      { terminal: false, fenced: false },
      { terminal: false, fenced: true },
    ]);
    expect({ state: final.state, owner: owns.shard_id }).toEqual({ state: 'done', owner: to });
    expect(counts[to]).toMatchObject({ acknowledged: ids.length, duplicated: 0, fencesHeld: 0, captures: 0 });
    expect(counts[from]).toEqual({ acknowledged: 0, duplicated: 0, ofOwner: 0, fencesHeld: 0, captures: 0 });
    // Beyond the acknowledged ones, only writes whose answer was lost (cut by a kill) may be there.
    expect(counts[to]?.ofOwner).toBeLessThanOrEqual(ids.length + writer.unknown.size);

    expect(await run.stop('SIGTERM')).toBe(0);
    expect(await postgresProcessesUnder(dataDir)).toEqual([]);
  }, 120_000);
});
