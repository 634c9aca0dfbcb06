/**
 * Move benchmark, in three parts, each printing its figures beside the goal of issue #15:
 *
 * 1. **One big move**: a hash slot holding 100,000 rows (users and their documents) moved from
 *    `shard_a` to `shard_b` while 8 writers, in a process of their own (so that the figures are
 *    the mover's, not its event loop shared with the writers), keep inserting, updating and
 *    deleting the moving keys through `withShardWrite`. Figures: copy rate (goal >= 50k rows/s), how long writes were
 *    fenced (the mover's record, the writers' p99 latency, and the slowest of the writes that met
 *    the fence: goal < 250 ms each), the catch-up lag
 *    (the age of the oldest change not yet applied on the target, sampled on the source every
 *    20 ms from the first time the copy's backlog was caught up to the flip: goal < 1 s), and
 *    what the writers were told against what the shards hold (goal 0 lost, 0 duplicated,
 *    nothing left on the old owner). While the job copies, the active backends of the source and
 *    the target are sampled every 100 ms (`pg_stat_activity`: CPU or the wait event, and whether
 *    it is the copy), so that a slow copy can be told from a fast one. `--repeat N` runs it N
 *    times, each in a slot of its own, and ends with the median and range of each figure and the
 *    load average of each run: one move is not a figure on a shared machine. The writers' warm-up
 *    (the writes that started before every writer's first `WARM_UP_WRITES` writes were answered: the writers'
 *    process answers `started` only then) is printed on its own and counted in no latency figure;
 *    from the second run on, both shards are vacuumed and analyzed once the slot is seeded.
 * 2. **Parallel moves**: one slot per source shard, every source moving to its own target at
 *    once, for 1, 2, ... `--sources` sources; the aggregate rows/s must rise with the sources.
 * 3. **Torture at full size** (`--torture N` schedules): the same seeding and writers (every third
 *    write read back with its read-your-writes token), with the mover killed at crash points
 *    chosen by fast-check, each kill either a SIGKILL of a mover process or a run stopped dead
 *    with its lease expired (seed printed; `TORTURE_SEED` replays).
 *
 * Run: `npm run bench:moves` (options: `--users N` users in the slot, default 1000; `--docs N`
 * documents per user, default 99; `--writers N`, default 8; `--sources N`, default 2;
 * `--parallel-users N` users per slot in part 2, default 500; `--torture N`, default 2;
 * `--repeat N` part 1 N times, default 1; `--copy-batch-rows N` and `--copy-lanes N`, the mover's
 * `copyBatchRows` and `copyLanes` in parts 1 and 2, default 20000 and 1; `--mover-login L`, the
 * mover's login in parts 1 and 2: `superuser` (default), `unprivileged`, a member of
 * `ca_dms_mover` without shard migration 006's grant (as on RDS), whose bulk transactions skip row
 * triggers through shard migration 016's `mover_replica_role()`, or `unprivileged-triggers`, the
 * same without that function either, so that its copy fires the target's row triggers and
 * foreign keys).
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import fc from 'fast-check';
import pg from 'pg';
import { z } from 'zod';
import { MOVE_CRASH_POINTS } from '../functions/core/sharding/move-machine.js';
import { MOVER_ROLE, ensureLogin } from '../functions/adapters/postgres/app-role.js';
import type { MoveJob } from '../functions/adapters/postgres/mover.js';
import { countSlot, keysInSlot, seedUsers, shardIds, startMoveEnv, type MoveEnv } from '../test/integration/sharding/fixtures/move-env.js';
import { tortureRun, type TortureReport } from '../test/integration/sharding/fixtures/torture.js';
import { WARM_UP_WRITES } from '../test/integration/sharding/fixtures/workload.js';

const GOAL = { fenceMs: 250, copyRowsPerSecond: 50_000, lagMs: 1000 };

const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '1000' },
    docs: { type: 'string', default: '99' },
    writers: { type: 'string', default: '8' },
    sources: { type: 'string', default: '2' },
    'parallel-users': { type: 'string', default: '500' },
    torture: { type: 'string', default: '2' },
    repeat: { type: 'string', default: '1' },
    'copy-batch-rows': { type: 'string', default: '20000' },
    'copy-lanes': { type: 'string', default: '1' },
    'mover-login': { type: 'string', default: 'superuser' },
  },
});
const opts = z
  .object({
    users: z.coerce.number().int().min(1).max(100_000),
    docs: z.coerce.number().int().min(0).max(10_000),
    writers: z.coerce.number().int().min(1).max(32),
    sources: z.coerce.number().int().min(1).max(6),
    'parallel-users': z.coerce.number().int().min(1).max(100_000),
    torture: z.coerce.number().int().min(0).max(100),
    repeat: z.coerce.number().int().min(1).max(50),
    'copy-batch-rows': z.coerce.number().int().min(100).max(1_000_000),
    'copy-lanes': z.coerce.number().int().min(1).max(16),
    'mover-login': z.enum(['superuser', 'unprivileged', 'unprivileged-triggers']),
  })
  .safeParse(values);
if (!opts.success) {
  console.error(`bench:moves: ${opts.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  process.exit(2);
}
const { users: USERS, docs: DOCS, writers: WRITERS, sources: SOURCES, torture: TORTURE_RUNS } = opts.data;
const PARALLEL_USERS = opts.data['parallel-users'];
const REPEAT = opts.data.repeat;
const COPY_BATCH_ROWS = opts.data['copy-batch-rows'];
const COPY_LANES = opts.data['copy-lanes'];
const MOVER_LOGIN = opts.data['mover-login'];

/**
 * The mover's shard pools for `--mover-login unprivileged[-triggers]`: a login that is only a
 * member of `ca_dms_mover`, which has lost `set on parameter session_replication_role` (RDS's
 * master cannot grant it: shard migration 006) and, for `unprivileged-triggers`, the right to call
 * `mover_replica_role()` (shard migration 016), so that its copy pays the target's row triggers
 * and foreign keys. Null for the default, the env's superuser pools.
 */
async function moverPools(env: MoveEnv): Promise<Map<string, pg.Pool> | null> {
  if (MOVER_LOGIN === 'superuser') return null;
  const login = { username: 'bench_mover', password: 'bench-mover' };
  const pools = new Map<string, pg.Pool>();
  for (const [id, admin] of env.shards) {
    await admin.query(`revoke set on parameter session_replication_role from ${MOVER_ROLE}`);
    if (MOVER_LOGIN === 'unprivileged-triggers') await admin.query(`revoke execute on function mover_replica_role() from ${MOVER_ROLE}`);
    await ensureLogin(admin, login, { role: MOVER_ROLE });
    const url = new URL(env.urls.shards[id] as string);
    url.username = login.username;
    url.password = login.password;
    const pool = new pg.Pool({ connectionString: url.toString(), max: 12 });
    pool.on('error', () => undefined);
    const { rows } = await pool.query<{ su: boolean }>('select rolsuper as su from pg_roles where rolname = current_user');
    if (rows[0]?.su !== false) throw new Error(`bench:moves: the mover's login on ${id} is a superuser`);
    pools.set(id, pool);
  }
  return pools;
}

const ms = (a: Date | null | undefined, b: Date | null | undefined): number => (a && b ? b.getTime() - a.getTime() : Number.NaN);
const rate = (rows: number, millis: number): string => `${Math.round((rows / millis) * 1000).toLocaleString('en')} rows/s`;
const verdict = (ok: boolean): string => (ok ? 'MET' : 'NOT MET');
function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? Number.NaN : (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number);
}

/** A slot owned by `shard`, not yet used by this run. */
async function slotOwnedBy(env: MoveEnv, shard: string, used: Set<number>): Promise<number> {
  const map = await env.slotMaps.current();
  const slot = map.assignments.findIndex((owner, s) => owner === shard && !used.has(s) && s % 7 === 3);
  if (slot < 0) throw new Error(`no free slot owned by ${shard}`);
  used.add(slot);
  return slot;
}

/**
 * Calls `sample` with the job's state every `intervalMs` until `stop()`, or until `sample`
 * returns false (the job has left the states the sampler watches).
 */
function pollJob<T>(env: MoveEnv, jobId: () => number | undefined, intervalMs: number, result: T, sample: (id: number, state: string | undefined) => Promise<boolean>): { stop(): Promise<T> } {
  let running = true;
  const loop = (async () => {
    while (running) {
      const id = jobId();
      if (id !== undefined) {
        const { rows } = await env.catalog.query<{ state: string }>('select state from catalog.move_jobs where id = $1', [id]);
        if (!(await sample(id, rows[0]?.state))) return;
      }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return result;
    },
  };
}

/**
 * Samples, every 20 ms, the age of the oldest change of the job not yet applied on the target
 * (0 when none is pending), from the moment the backlog the copy left behind is drained (every
 * change still pending was captured after the catch-up began) until the job is published. A
 * backlog count would not do as that mark: under 8 writers it may never fall below any fixed
 * number before the final catch-up inside the fence, and then nothing is sampled.
 */
function sampleLag(env: MoveEnv, source: pg.Pool, jobId: () => number | undefined): { stop(): Promise<{ state: string; ms: number }[]> } {
  const samples: { state: string; ms: number }[] = [];
  let catchUpBegan: number | undefined;
  let caughtUp = false;
  return pollJob(env, jobId, 20, samples, async (id, state) => {
    if (state === 'catching_up' || state === 'cutover' || state === 'verifying') {
      const { rows: lag } = await source.query<{ now: number; oldest: number | null }>(
        'select extract(epoch from clock_timestamp()) * 1000 as now, extract(epoch from min(captured_at)) * 1000 as oldest from move_changes where job_id = $1',
        [id],
      );
      const now = Number(lag[0]?.now);
      const oldest = lag[0]?.oldest === null || lag[0]?.oldest === undefined ? undefined : Number(lag[0].oldest);
      catchUpBegan ??= now;
      if (oldest === undefined || oldest >= catchUpBegan) caughtUp = true;
      if (caughtUp) samples.push({ state, ms: oldest === undefined ? 0 : Math.max(0, now - oldest) });
      return true;
    }
    return state === 'planned' || state === 'copying';
  });
}

/**
 * Samples, every 100 ms while the job is `copying`, what each active backend of the source and
 * the target is doing (`pg_stat_activity`: the mover's COPY, the writers, autovacuum, the
 * checkpointer), so that a slow copy can be told from a fast one by where its time went.
 */
function sampleWaits(env: MoveEnv, shards: Readonly<Record<'source' | 'target', pg.Pool>>, jobId: () => number | undefined): { stop(): Promise<Map<string, number>> } {
  const counts = new Map<string, number>();
  return pollJob(env, jobId, 100, counts, async (_id, state) => {
    if (state !== 'copying') return state === 'planned';
    for (const [side, pool] of Object.entries(shards)) {
      const { rows: active } = await pool.query<{ what: string }>(
        `select backend_type || ' ' || coalesce(wait_event_type || ':' || wait_event, 'CPU') || case when query ilike 'copy%' then ' (copy)' else '' end as what
           from pg_stat_activity where pid <> pg_backend_pid() and (state is null or state = 'active')
            and backend_type in ('client backend', 'autovacuum worker', 'checkpointer', 'walwriter') and coalesce(wait_event_type, '') <> 'Activity'`,
      );
      for (const { what } of active) counts.set(`${side} ${what}`, (counts.get(`${side} ${what}`) ?? 0) + 1);
    }
    return true;
  });
}

/** The target's WAL written, WAL-buffer overflows, checkpoints and autovacuum runs so far (PostgreSQL 17 views). */
async function walStats(pool: pg.Pool): Promise<{ bytes: number; buffersFull: number; checkpoints: number; autovacuums: number }> {
  const { rows } = await pool.query<{ bytes: string; full: string; checkpoints: string; autovacuums: string }>(
    `select (select wal_bytes from pg_stat_wal)::text as bytes, (select wal_buffers_full from pg_stat_wal)::text as full,
            (select num_timed + num_requested from pg_stat_checkpointer)::text as checkpoints,
            (select sum(autovacuum_count + autoanalyze_count) from pg_stat_user_tables where relname in ('users', 'documents'))::text as autovacuums`,
  );
  const r = rows[0];
  return { bytes: Number(r?.bytes), buffersFull: Number(r?.full), checkpoints: Number(r?.checkpoints), autovacuums: Number(r?.autovacuums) };
}

async function steps(env: MoveEnv, job: MoveJob): Promise<Record<string, Date | null>> {
  const { rows } = await env.catalog.query<Record<string, Date | null>>(
    'select copying_at, catching_up_at, cutover_at, fenced_at, verifying_at, flip_started_at, unfenced_at, cleaning_up_at, finished_at from catalog.move_jobs where id = $1',
    [job.id],
  );
  return rows[0] ?? {};
}

/** The phases of a move, in order, each from its step timestamp to the next one's (see {@link writesByPhase}). */
const PHASES = [
  ['before copying', null],
  ['copying', 'copying_at'],
  ['catching_up', 'catching_up_at'],
  ['cutover, before the fence', 'cutover_at'],
  ['fenced: final catch-up', 'fenced_at'],
  ['verifying', 'verifying_at'],
  ['flip..unfenced', 'flip_started_at'],
  ['unfenced..cleaning_up', 'unfenced_at'],
  ['cleaning_up', 'cleaning_up_at'],
  ['after finished', 'finished_at'],
] as const;
type Phase = (typeof PHASES)[number][0];

/** One phase's writes: how many started in it, and their latency. */
interface PhaseWrites {
  readonly phase: Phase;
  readonly count: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

/**
 * The writers' acknowledged writes by the phase of the job in which each started (its wall-clock
 * start against the job's step timestamps, both epoch ms on this machine's clock). A phase whose
 * step was not recorded, or whose step timestamp falls before the previous one's (after a fence
 * given up, `fenced_at` is the last attempt's while the others keep the first entry), is merged
 * into the phase before it; `ordered` says whether that happened.
 */
function writesByPhase(t: Record<string, Date | null>, startedAtMs: readonly number[], latenciesMs: readonly number[]): { phases: PhaseWrites[]; ordered: boolean; slowest: string[] } {
  const bounds: { phase: Phase; at: number }[] = [];
  let ordered = true;
  for (const [phase, column] of PHASES) {
    const at = column === null ? Number.NEGATIVE_INFINITY : (t[column]?.getTime() ?? Number.NaN);
    if (Number.isNaN(at) || (bounds.length > 0 && at < (bounds.at(-1)?.at as number))) {
      ordered = false;
      continue;
    }
    bounds.push({ phase, at });
  }
  const latencies = new Map<Phase, number[]>(bounds.map((b) => [b.phase, []]));
  const phaseOf = (start: number): { phase: Phase; at: number } => {
    let i = bounds.length - 1;
    while (i > 0 && start < (bounds[i]?.at as number)) i -= 1;
    return bounds[i] as { phase: Phase; at: number };
  };
  startedAtMs.forEach((start, i) => latencies.get(phaseOf(start).phase)?.push(latenciesMs[i] as number));
  const phases = bounds.map(({ phase }) => {
    const l = latencies.get(phase) ?? [];
    return { phase, count: l.length, p50: quantile(l, 0.5), p99: quantile(l, 0.99), max: l.length === 0 ? Number.NaN : Math.max(...l) };
  });
  // The five slowest writes: where each started, and how far into that phase.
  const slowest = latenciesMs
    .map((ms, i) => ({ ms, start: startedAtMs[i] as number }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, 5)
    .map(({ ms, start }) => {
      const { phase, at } = phaseOf(start);
      const copying = t['copying_at']?.getTime();
      return `${ms.toFixed(0)} ms (${phase} ${Number.isFinite(at) ? `+${(start - at).toFixed(0)} ms` : copying === undefined ? '' : `-${(copying - start).toFixed(0)} ms`})`;
    });
  return { phases, ordered, slowest };
}

function printOutcome(report: TortureReport): void {
  const { load } = report;
  console.log(`  writers told                ${load.acknowledged} writes acknowledged, ${load.retried} waited or re-routed, ${load.errors.length} failed`);
  console.log(`  token-holding reads         ${load.tokenReads} writes read back at once with their read-your-writes token (every one must see its write)`);
  console.log(`  lost / duplicated / left    ${report.violations.length === 0 ? '0 / 0 / 0' : `${report.violations.length} violation(s)`}   goal 0: ${verdict(report.violations.length === 0)}`);
  for (const v of report.violations.slice(0, 10)) console.log(`    ${v}`);
}

interface BigMove {
  readonly copyRate: number;
  readonly fenceMs: number;
  readonly p99: number;
  /** The slowest write that met the fence (NaN: none did). */
  readonly metMax: number;
  readonly maxLag: number;
  readonly lost: number;
  /** The writers' p99 over the writes that started while the job moved (copying to finished). */
  readonly duringP99: number;
  /** The writers' latency by the phase of the job each write started in. */
  readonly byPhase: readonly PhaseWrites[];
  /** 1-minute load average when the move's seeding began, and when it was done. */
  readonly loadBefore: number;
  readonly loadAfter: number;
}

/** Part 1, once: one big move under writers; prints its figures and returns the headline ones. */
async function oneBigMove(env: MoveEnv, used: Set<number>, run: number, moverShards: ReadonlyMap<string, pg.Pool> | null): Promise<BigMove> {
  // Each run's move starts from shards without the dead rows of the run before (its clean-up's
  // deletes): vacuumed once the slot is seeded, not before. Vacuumed before, the source's tables,
  // emptied by the clean-up, were recorded as holding no row, and the seeding's insert of 99,000
  // documents then ran the write-fence trigger's lookup of each new id (shard migration 018) on a
  // plan made for an empty table, a sequential scan of the rows inserted so far: 7 minutes
  // (run 2's "end to end 439466 ms", every second of it seeding).
  let vacuumMs = 0;
  const afterSeed = async (): Promise<void> => {
    const vacuumStarted = performance.now();
    for (const id of ['shard_a', 'shard_b']) await (env.shards.get(id) as pg.Pool).query('vacuum analyze users, documents');
    vacuumMs = performance.now() - vacuumStarted;
  };
  const loadBefore = os.loadavg()[0] ?? Number.NaN;
  const targetWal = env.shards.get('shard_b') as pg.Pool;
  const walBefore = await walStats(targetWal);
  const slot = await slotOwnedBy(env, 'shard_a', used);
  let jobId: number | undefined;
  const lag = sampleLag(env, env.shards.get('shard_a') as pg.Pool, () => jobId);
  const waits = sampleWaits(env, { source: env.shards.get('shard_a') as pg.Pool, target: env.shards.get('shard_b') as pg.Pool }, () => jobId);
  const started = performance.now();
  const report = await tortureRun(env, {
    slot,
    users: USERS,
    docsPerUser: DOCS,
    writers: WRITERS,
    crashes: [],
    batchRows: 5000,
    copyBatchRows: COPY_BATCH_ROWS,
    copyLanes: COPY_LANES,
    to: 'shard_b',
    writersProcess: true,
    ...(run > 1 ? { afterSeed } : {}),
    ...(moverShards === null ? {} : { moverShards }),
    onPlanned: (job) => {
      jobId = job.id;
    },
  });
  const elapsedMs = performance.now() - started;
  const walAfter = await walStats(targetWal);
  const lagByState = await lag.stop();
  const waitCounts = await waits.stop();
  const lagSamples = lagByState.map((l) => l.ms);
  const { job } = report;
  const t = await steps(env, job);
  const rows = USERS + USERS * DOCS;
  const copyMs = ms(t.copying_at, t.catching_up_at);
  const copyRate = (job.rowsCopied / copyMs) * 1000;
  const fenceMs = job.fenceMs ?? Number.NaN;
  // The writers' warm-up (each writer's first WARM_UP_WRITES writes, and any write that started
  // before the last of them came back: before the writers' process answered `started`) is the writers' cold
  // start, not the move's: reported on its own line and left out of every latency figure.
  const warmAt = report.load.warmAtMs;
  const measured = report.load.latenciesMs.map((_, i) => i).filter((i) => !((report.load.startedAtMs[i] as number) < warmAt));
  const warmUp = report.load.latenciesMs.filter((_, i) => (report.load.startedAtMs[i] as number) < warmAt);
  const latencies = measured.map((i) => report.load.latenciesMs[i] as number);
  const startedAt = measured.map((i) => report.load.startedAtMs[i] as number);
  const p99 = quantile(latencies, 0.99);
  const maxLag = Math.max(0, ...lagSamples);
  console.log(`\n1.${run} one move of slot ${slot}, shard_a -> shard_b, ${WRITERS} concurrent writers on its keys, copy pages of ${COPY_BATCH_ROWS} rows in ${COPY_LANES} lane(s)`);
  console.log(`  rows in the slot            ${rows.toLocaleString('en')} (${USERS} users, ${USERS * DOCS} documents; ${job.rowsCopied} copied)`);
  console.log(`  copy                        ${copyMs.toFixed(0)} ms  -> ${rate(job.rowsCopied, copyMs)}   goal >= ${GOAL.copyRowsPerSecond.toLocaleString('en')}: ${verdict(copyRate >= GOAL.copyRowsPerSecond)}`);
  const waitTotal = [...waitCounts.values()].reduce((a, b) => a + b, 0);
  const topWaits = [...waitCounts].sort((a, b) => b[1] - a[1]).slice(0, 8);
  console.log(`    active backends sampled   ${topWaits.map(([what, n]) => `${what} ${((n / Math.max(1, waitTotal)) * 100).toFixed(0)}%`).join(', ')} (${waitTotal} samples)`);
  console.log(
    `    target WAL over the move   ${((walAfter.bytes - walBefore.bytes) / 2 ** 20).toFixed(0)} MB, WAL buffers full ${walAfter.buffersFull - walBefore.buffersFull} time(s), checkpoints ${walAfter.checkpoints - walBefore.checkpoints}, autovacuum/analyze runs on its tables ${walAfter.autovacuums - walBefore.autovacuums}`,
  );
  console.log(`  catch up                    ${ms(t.catching_up_at, t.cutover_at).toFixed(0)} ms (${job.changesApplied} changes applied in total)`);
  console.log(
    lagSamples.length === 0
      ? `  catch-up lag                not measured (no sample after the copy's backlog drained)   goal < ${GOAL.lagMs} ms: NOT MEASURED`
      : `  catch-up lag                max ${maxLag.toFixed(0)} ms, p50 ${quantile(lagSamples, 0.5).toFixed(0)} ms over ${lagSamples.length} samples   goal < ${GOAL.lagMs} ms: ${verdict(maxLag < GOAL.lagMs)}`,
  );
  // Where the worst lag was: catching up, or comparing the sides before the fence (cutover).
  const lagStates = [...new Set(lagByState.map((l) => l.state))];
  if (lagStates.length > 0) {
    console.log(`    max by state              ${lagStates.map((st) => `${st} ${Math.max(...lagByState.filter((l) => l.state === st).map((l) => l.ms)).toFixed(0)} ms`).join(', ')}`);
  }
  // Step timestamps keep the first entry into a state, so after a fence given up they span attempts.
  if (job.fenceTimeouts === 0) {
    console.log(`  fenced                      final catch-up ${ms(t.fenced_at, t.verifying_at).toFixed(0)} ms, verify ${ms(t.verifying_at, t.flip_started_at).toFixed(0)} ms, publish + release ${ms(t.flip_started_at, t.unfenced_at).toFixed(0)} ms`);
  } else {
    console.log(`  fence given up              ${job.fenceTimeouts} time(s) at the default 2 s budget (writes released each time), then held ${ms(t.fenced_at, t.unfenced_at).toFixed(0)} ms`);
  }
  console.log(`  writes fenced (mover)       ${fenceMs.toFixed(0)} ms   goal < ${GOAL.fenceMs} ms: ${verdict(fenceMs < GOAL.fenceMs)}`);
  console.log(
    `  writers' warm-up            ${warmUp.length} writes started before the writers were warm (each writer's first ${WARM_UP_WRITES}): max ${warmUp.length === 0 ? '-' : Math.max(...warmUp).toFixed(0)} ms, ${Number.isFinite(warmAt) && t.copying_at ? `warm ${(t.copying_at.getTime() - warmAt).toFixed(0)} ms before copying` : 'never warm'}; not counted below`,
  );
  console.log(`  write latency (writers)     p50 ${quantile(latencies, 0.5).toFixed(0)} ms, p99 ${p99.toFixed(0)} ms, max ${Math.max(...latencies).toFixed(0)} ms   goal p99 < ${GOAL.fenceMs} ms: ${verdict(p99 < GOAL.fenceMs)}`);
  // The writes that started while the job moved (copying to finished): the writers' warm-up and
  // the time before the plan and after the clean-up are not the move's.
  const [moveFrom, moveTo] = [t.copying_at?.getTime() ?? Number.NaN, t.finished_at?.getTime() ?? Number.NaN];
  const during = latencies.filter((_, i) => (startedAt[i] as number) >= moveFrom && (startedAt[i] as number) < moveTo);
  const duringP99 = quantile(during, 0.99);
  console.log(
    `  write latency (in the move) ${during.length} writes started copying..finished: p50 ${quantile(during, 0.5).toFixed(0)} ms, p99 ${duringP99.toFixed(0)} ms, max ${Math.max(...during).toFixed(0)} ms   goal p99 < ${GOAL.fenceMs} ms: ${verdict(duringP99 < GOAL.fenceMs)}`,
  );
  // Where in the move the slow writes were: each write by the phase it started in.
  const byPhase = writesByPhase(t, startedAt, latencies);
  console.log(`    by phase started in       count, p50 / p99 / max ms${byPhase.ordered ? '' : ' (some step timestamps missing or out of order: merged into the phase before)'}`);
  for (const p of byPhase.phases) {
    const fig = (v: number): string => (Number.isNaN(v) ? '-' : v.toFixed(0));
    console.log(`      ${p.phase.padEnd(26)}${String(p.count).padStart(6)}  ${fig(p.p50)} / ${fig(p.p99)} / ${fig(p.max)}`);
  }
  console.log(`    slowest writes            ${byPhase.slowest.join(', ')}`);
  // The fence as the writes that met it saw it: waiting, re-routing and the first write on the
  // new owner. There are about as many as writers, so their p99 is their max.
  const met = report.load.retriedLatenciesMs;
  const metMax = met.length === 0 ? Number.NaN : Math.max(...met);
  console.log(
    met.length === 0
      ? '  writes that met the fence   none (no write arrived while the unit was fenced)'
      : `  writes that met the fence   ${met.length}: p50 ${quantile(met, 0.5).toFixed(0)} ms, max ${metMax.toFixed(0)} ms   goal max < ${GOAL.fenceMs} ms: ${verdict(metMax < GOAL.fenceMs)}`,
  );
  console.log(`  clean up (delete source)    ${ms(t.cleaning_up_at, t.finished_at).toFixed(0)} ms (${job.rowsDeleted} rows)`);
  console.log(`  end to end                  ${elapsedMs.toFixed(0)} ms incl. seeding; move ${ms(t.copying_at, t.finished_at).toFixed(0)} ms -> ${rate(rows, ms(t.copying_at, t.finished_at))}`);
  const st = report.stagesMs;
  console.log(
    `    where it went             seed ${st.seed.toFixed(0)} ms (of which vacuum analyze ${vacuumMs.toFixed(0)} ms), writers start ${st.writersStart.toFixed(0)} ms, plan ${st.plan.toFixed(0)} ms, mover run(s) ${st.move.toFixed(0)} ms, writers stop ${st.writersStop.toFixed(0)} ms, checks ${st.checks.toFixed(0)} ms`,
  );
  printOutcome(report);
  console.log(`  load average after the move ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} (1, 5, 15 min)`);
  return { copyRate, fenceMs, p99, metMax, maxLag, lost: report.violations.length, duringP99, byPhase: byPhase.phases, loadBefore, loadAfter: os.loadavg()[0] ?? Number.NaN };
}

/** Median and range of each headline figure over the repeated part 1, with the load of each run. */
function printSummary(moves: readonly BigMove[]): void {
  const figure = (name: string, values: readonly number[], unit: string, goal: string, ok: (v: number) => boolean): void => {
    const sorted = [...values].sort((a, b) => a - b);
    const median = sorted.length % 2 === 1 ? (sorted[(sorted.length - 1) / 2] as number) : ((sorted[sorted.length / 2 - 1] as number) + (sorted[sorted.length / 2] as number)) / 2;
    const met = values.filter(ok).length;
    const fmt = (v: number): string => Math.round(v).toLocaleString('en');
    console.log(`  ${name.padEnd(26)}  median ${fmt(median)} ${unit}, range ${fmt(sorted[0] as number)}-${fmt(sorted.at(-1) as number)}   goal ${goal}: met in ${met} of ${values.length}`);
  };
  console.log(`\n1. summary of ${moves.length} moves (1-min load average before/after each: ${moves.map((m) => `${m.loadBefore.toFixed(1)}/${m.loadAfter.toFixed(1)}`).join(', ')})`);
  figure('copy', moves.map((m) => m.copyRate), 'rows/s', `>= ${GOAL.copyRowsPerSecond.toLocaleString('en')}`, (v) => v >= GOAL.copyRowsPerSecond);
  figure('writes fenced (mover)', moves.map((m) => m.fenceMs), 'ms', `< ${GOAL.fenceMs}`, (v) => v < GOAL.fenceMs);
  figure('write latency p99', moves.map((m) => m.p99), 'ms', `< ${GOAL.fenceMs}`, (v) => v < GOAL.fenceMs);
  const fenceMet = moves.filter((m) => !Number.isNaN(m.metMax));
  if (fenceMet.length > 0) figure('writes that met the fence', fenceMet.map((m) => m.metMax), 'ms (max)', `< ${GOAL.fenceMs}`, (v) => v < GOAL.fenceMs);
  figure('catch-up lag max', moves.map((m) => m.maxLag), 'ms', `< ${GOAL.lagMs}`, (v) => v < GOAL.lagMs);
  figure('write p99 in the move', moves.map((m) => m.duringP99), 'ms', `< ${GOAL.fenceMs}`, (v) => v < GOAL.fenceMs);
  // The writers' p99 by phase, over the runs that had writes in it.
  for (const [phase] of PHASES) {
    const p99s = moves.flatMap((m) => m.byPhase.filter((p) => p.phase === phase && p.count > 0).map((p) => p.p99));
    if (p99s.length > 0) figure(`  p99 ${phase}`, p99s, 'ms', `< ${GOAL.fenceMs}`, (v) => v < GOAL.fenceMs);
  }
  figure('lost / duplicated / left', moves.map((m) => m.lost), 'violations', '0', (v) => v === 0);
}

const shardCount = Math.max(2, SOURCES * 2);
const env = await startMoveEnv({ shards: shardCount });
const used = new Set<number>();
const moverShards = await moverPools(env);
try {
  console.log(`bench:moves on ${os.cpus().length} CPU(s), load average ${os.loadavg()[0]?.toFixed(1)}, ${shardCount} shards, the mover's login: ${MOVER_LOGIN}`);

  // Part 1: one big move under writers, `--repeat` times (each in a slot of its own).
  const moves: BigMove[] = [];
  for (let run = 1; run <= REPEAT; run++) moves.push(await oneBigMove(env, used, run, moverShards));
  if (REPEAT > 1) printSummary(moves);

  // Part 2: moves from different sources at once.
  console.log(`\n2. parallel moves: one slot of ${(PARALLEL_USERS * (DOCS + 1)).toLocaleString('en')} rows per source, each source to its own target, no writers`);
  const ids = shardIds(shardCount);
  let single = Number.NaN;
  for (let sources = 1; sources <= SOURCES; sources++) {
    const pairs = Array.from({ length: sources }, (_, i) => ({ from: ids[i] as string, to: ids[SOURCES + i] as string }));
    const units = [];
    for (const { from, to } of pairs) {
      const s = await slotOwnedBy(env, from, used);
      const pool = env.shards.get(from) as pg.Pool;
      await seedUsers(pool, s, keysInSlot(s, PARALLEL_USERS), DOCS);
      await pool.query('vacuum analyze users, documents');
      units.push({ slot: s, from, to, rows: (await countSlot(pool, s)).users + (await countSlot(pool, s)).documents });
    }
    const movers = units.map(() => env.mover({ readerGraceMs: 0, copyBatchRows: COPY_BATCH_ROWS, copyLanes: COPY_LANES, ...(moverShards === null ? {} : { shards: moverShards }) }));
    const jobs = await Promise.all(units.map((u, i) => (movers[i] as ReturnType<MoveEnv['mover']>).plan({ kind: 'slot', slot: u.slot, to: u.to, createdBy: 'bench' })));
    const t0 = performance.now();
    const done = await Promise.all(jobs.map((j, i) => (movers[i] as ReturnType<MoveEnv['mover']>).run(j.id)));
    const wall = performance.now() - t0;
    const total = units.reduce((a, u) => a + u.rows, 0);
    const perSecond = (total / wall) * 1000;
    if (sources === 1) single = perSecond;
    const states = done.map((d) => d.state).join(', ');
    console.log(
      `  ${sources} source(s) (${pairs.map((p) => `${p.from}->${p.to}`).join(', ')}): ${total.toLocaleString('en')} rows in ${wall.toFixed(0)} ms -> ${rate(total, wall)}` +
        (sources === 1 ? '' : ` = ${(perSecond / single).toFixed(2)}x one source   goal > 1x: ${verdict(perSecond > single)}`) +
        ` [${states}]`,
    );
  }

  // Part 3: the torture run at full size.
  if (TORTURE_RUNS > 0) {
    const seed = process.env['TORTURE_SEED'] === undefined ? Date.now() % 2 ** 31 : Number(process.env['TORTURE_SEED']);
    console.log(`\n3. torture at full size: ${TORTURE_RUNS} schedule(s), seed ${seed} (TORTURE_SEED=${seed} replays)`);
    const schedules = fc.sample(fc.tuple(fc.subarray([...MOVE_CRASH_POINTS], { minLength: 1, maxLength: 4 }), fc.array(fc.boolean(), { minLength: 4, maxLength: 4 })), {
      numRuns: TORTURE_RUNS,
      seed,
    });
    for (const [crashes, sigkill] of schedules) {
      const s = await slotOwnedBy(env, 'shard_a', used);
      const r = await tortureRun(env, { slot: s, users: USERS, docsPerUser: DOCS, writers: WRITERS, crashes, sigkill, batchRows: 5000, copyBatchRows: 20_000, to: 'shard_b', writersProcess: true });
      const how = crashes.map((c, i) => `${c}${sigkill[i] === true ? ' (SIGKILL)' : ''}`).join(', ');
      console.log(
        `  killed at ${how}: ${r.runs} runs, ${r.job.state}, ${r.load.acknowledged} writes acknowledged, ${r.load.tokenReads} read back with their tokens, ${r.violations.length} violation(s): ${verdict(r.violations.length === 0)}`,
      );
      for (const v of r.violations.slice(0, 10)) console.log(`    ${v}`);
    }
  }
} finally {
  await Promise.all([...(moverShards?.values() ?? [])].map((p) => p.end()));
  await env.stop();
}
