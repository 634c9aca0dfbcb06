import { describe, expect, it } from 'vitest';
import {
  driveMove,
  MOVE_CRASH_POINTS,
  MOVE_TRANSITIONS,
  MoveCancelRefused,
  MoveError,
  MoveFenceBudgetSpent,
  MoveFenceTimeoutError,
  MoveOwnerConflict,
  MovePaused,
  moveRoutingOf,
  moveUnitFor,
  type FlipOutcome,
  type MoveCrashPoint,
  type MoveJobView,
  type MovePort,
  type MoveTransitionName,
  type VerifyOutcome,
} from '../../../functions/core/sharding/move-machine.js';
import { loadShardingConfig } from '../../../functions/core/sharding/config.js';
import { canTransition } from '../../../functions/core/sharding/move-plan.js';

type Job = MoveJobView;

/** An in-memory port that records the steps it is asked for; `fenceHeld` scripts the fence outcomes. */
function recordingPort(options: { fenceHeld?: boolean[]; flip?: FlipOutcome['kind']; verdicts?: VerifyOutcome['kind'][] } = {}) {
  const calls: string[] = [];
  const fences = [...(options.fenceHeld ?? [true])];
  const verdicts = [...(options.verdicts ?? [])];
  const flips = options.flip === undefined ? [] : [options.flip];
  let stored: Job = { id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'planned', cancelRequested: false, flipStarted: false };
  const port: MovePort<Job> = {
    reload: async () => stored,
    async transition(_job, name: MoveTransitionName) {
      calls.push(`transition:${name}`);
      stored = { ...stored, state: MOVE_TRANSITIONS[name].to };
      return stored;
    },
    prepareSource: async () => void calls.push('prepareSource'),
    copy: async (job) => (calls.push('copy'), job),
    catchUp: async (_job, until) => (calls.push(`catchUp:${until}`), true),
    fence: async () => (calls.push('fence'), fences.shift() ?? true),
    unfence: async () => void calls.push('unfence'),
    verify: async () => {
      calls.push('verify');
      const kind = verdicts.shift() ?? 'equal';
      return kind === 'differ' ? { kind, detail: 'rows differ' } : { kind };
    },
    async flip() {
      calls.push('flip');
      const kind = flips.shift() ?? 'flipped';
      if (kind === 'flipped') stored = { ...stored, flipStarted: true };
      if (kind === 'flipped' || kind === 'cancelled') return { kind, job: stored };
      return kind === 'conflict' ? { kind, detail: 'someone else' } : { kind };
    },
    releaseFence: async () => void calls.push('releaseFence'),
    cleanUp: async (job) => (calls.push('cleanUp'), job),
    async rollback(job, to) {
      calls.push(`rollback:${to}`);
      stored = { ...job, state: to };
      return stored;
    },
    recordError: async () => undefined,
    pause: async () => void calls.push('pause'),
  };
  return { port, calls, job: () => stored };
}

describe('the move protocol', () => {
  it('names transitions the state machine allows', () => {
    for (const [name, t] of Object.entries(MOVE_TRANSITIONS)) expect(canTransition(t.from, t.to), name).toBe(true);
  });

  it('walks every step in order and passes every crash point once', async () => {
    const { port, calls, job } = recordingPort();
    const points: MoveCrashPoint[] = [];

    const done = await driveMove(job(), port, { hook: (p) => void points.push(p) });

    expect(done.state).toBe('done');
    expect(points).toEqual([...MOVE_CRASH_POINTS]);
    expect(calls).toEqual([
      'transition:start',
      'prepareSource',
      'copy',
      'transition:copied',
      'catchUp:few',
      'transition:caught_up',
      'fence',
      'catchUp:all',
      'transition:drained',
      'verify',
      'flip',
      'releaseFence',
      'transition:flipped',
      'cleanUp',
      'transition:cleaned',
    ]);
  });

  it('stops when its time is up only where no fence is held, and returns the job where it is', async () => {
    for (const [upAfter, stopsAt, lastCall] of [
      ['copied', 'catching_up', 'transition:copied'],
      ['catching_up', 'catching_up', 'transition:copied'],
      ['cutover', 'cutover', 'transition:caught_up'],
      // Fenced: the verification, the flip and the release run to the end before it stops.
      ['fenced', 'cleaning_up', 'transition:flipped'],
      ['verifying', 'cleaning_up', 'transition:flipped'],
      ['cleaning_up', 'cleaning_up', 'transition:flipped'],
    ] as const) {
      const { port, calls } = recordingPort();
      let up = false;
      const stopped = await driveMove(await port.reload({} as Job), port, { hook: (p) => void (up ||= p === upAfter), timeUp: () => up });
      expect(stopped.state, upAfter).toBe(stopsAt);
      expect(calls.at(-1), upAfter).toBe(lastCall);
      expect(calls.filter((c) => c === 'unfence'), upAfter).toEqual([]);
    }
  });

  it('returns the job where it is when a step stops at a safe point (MovePaused), recording no error', async () => {
    const { port, calls } = recordingPort();
    let recorded = 0;
    port.copy = async () => {
      calls.push('copy');
      throw new MovePaused('time is up');
    };
    port.recordError = async () => void (recorded += 1);
    const stopped = await driveMove(await port.reload({} as Job), port, {});
    expect(stopped.state).toBe('copying');
    expect(calls).toEqual(['transition:start', 'prepareSource', 'copy']);
    expect(recorded).toBe(0);
  });

  it('goes back to catching up when the fence cannot be taken, and stops after the last attempt without holding it', async () => {
    const { port, calls } = recordingPort({ fenceHeld: [false, false] });

    const run = driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'cutover', cancelRequested: false, flipStarted: false }, port, { fenceAttempts: 2 });

    await expect(run).rejects.toBeInstanceOf(MoveFenceTimeoutError);
    // A run that starts in the cutover first reopens a fence a run before it may have left held.
    expect(calls).toEqual(['unfence', 'fence', 'transition:fence_timed_out', 'pause', 'catchUp:few', 'transition:caught_up', 'fence', 'transition:fence_timed_out']);
  });

  it('reopens the fence a killed run left held before anything else when resumed in the cutover or the verification, even with its time already up', async () => {
    for (const state of ['cutover', 'verifying'] as const) {
      const { port, calls } = recordingPort();
      const at: Job = { id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state, cancelRequested: false, flipStarted: false };

      const stopped = await driveMove(at, port, { timeUp: () => true });

      expect(stopped.state).toBe(state);
      expect(calls, state).toEqual(['unfence']);
    }
    // Once the new owner is published the source must stay closed: nothing is reopened.
    const flipped = recordingPort();
    await driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'verifying', cancelRequested: false, flipStarted: true }, flipped.port, { timeUp: () => true });
    expect(flipped.calls).toEqual([]);
  });

  it('reopens the fence it holds when a step under it fails, unless the catalog says the new owner was published', async () => {
    const at = (state: 'cutover' | 'verifying'): Job => ({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state, cancelRequested: false, flipStarted: false });
    // The final catch-up under the fence loses its connection.
    const lost = recordingPort();
    lost.port.reload = async (job) => ({ ...job, state: 'cutover' });
    lost.port.catchUp = async (_job, until) => {
      lost.calls.push(`catchUp:${until}`);
      if (until === 'all') throw new Error('connection terminated');
      return true;
    };
    await expect(driveMove(at('cutover'), lost.port)).rejects.toThrow(/stopped in cutover: connection terminated/);
    expect(lost.calls).toEqual(['unfence', 'fence', 'catchUp:all', 'unfence']);

    // The flip fails before its commit is known to have happened: the catalog decides.
    for (const published of [false, true]) {
      const flip = recordingPort();
      flip.port.reload = async (job) => ({ ...job, state: 'verifying', flipStarted: published });
      flip.port.flip = async () => {
        flip.calls.push('flip');
        throw new Error('catalog connection reset');
      };
      await expect(driveMove(at('verifying'), flip.port)).rejects.toThrow(/catalog connection reset/);
      // (A run that starts in the verification first reopens a fence a killed run may have left.)
      expect(flip.calls, `published: ${published}`).toEqual(published ? ['unfence', 'verify', 'flip', 'releaseFence'] : ['unfence', 'verify', 'flip', 'unfence']);
    }

    // A catalog that cannot be read leaves the fence to the next run (a flip may have committed).
    const dark = recordingPort();
    dark.port.reload = async () => {
      throw new Error('catalog unreachable');
    };
    dark.port.flip = async () => {
      dark.calls.push('flip');
      throw new Error('catalog connection reset');
    };
    await expect(driveMove(at('verifying'), dark.port)).rejects.toThrow(/catalog connection reset/);
    expect(dark.calls).toEqual(['unfence', 'verify', 'flip']);

    // ...unless the run says it never sent a flip: then none can have committed, and the fence is
    // reopened (a catalog gone silent under the fence, before the flip), as it may have sent one or not.
    for (const sent of [false, true]) {
      const silent = recordingPort();
      silent.port.reload = async () => {
        throw new Error('catalog unreachable');
      };
      silent.port.mayHavePublished = () => sent;
      silent.port.transition = async (_job, name) => {
        silent.calls.push(`transition:${name}`);
        throw new Error('Query read timeout');
      };
      await expect(driveMove(at('cutover'), silent.port)).rejects.toThrow(/Query read timeout/);
      expect(silent.calls, `sent: ${sent}`).toEqual(sent ? ['unfence', 'fence', 'catchUp:all', 'transition:drained'] : ['unfence', 'fence', 'catchUp:all', 'transition:drained', 'unfence']);
    }
  });

  it('starts no rollback once the run is out of time, whether asked for now or decided before', async () => {
    const requested = recordingPort();
    const cancelled: Job = { id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'catching_up', cancelRequested: true, flipStarted: false };
    expect((await driveMove(cancelled, requested.port, { timeUp: () => true })).state).toBe('catching_up');
    const decided = recordingPort();
    expect((await driveMove({ ...cancelled, rollbackTo: 'cancelled' }, decided.port, { timeUp: () => true })).state).toBe('catching_up');
    expect([...requested.calls, ...decided.calls]).toEqual([]);
    // With time left, both roll back.
    expect((await driveMove(cancelled, requested.port)).state).toBe('cancelled');
    expect((await driveMove({ ...cancelled, rollbackTo: 'cancelled' }, decided.port)).state).toBe('cancelled');
  });

  it('gives the fence up and tries again when the drained transition was cancelled at the end of the fence budget; any other failure of it stops the run', async () => {
    const cutover: Job = { id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'cutover', cancelRequested: false, flipStarted: false };
    const failingDrained = (error: Error) => {
      const recorded = recordingPort();
      let failed = false;
      const transition = recorded.port.transition.bind(recorded.port);
      recorded.port.transition = async (job, name) => {
        if (name === 'drained' && !failed) {
          failed = true;
          recorded.calls.push('transition:drained (fails)');
          throw error;
        }
        return transition(job, name);
      };
      return recorded;
    };
    const spent = failingDrained(new MoveFenceBudgetSpent('cancelled at the budget end'));
    const broken = failingDrained(new MoveError('the catalog connection was closed'));

    const done = await driveMove(cutover, spent.port, { fenceAttempts: 2 });
    const stopped = driveMove(cutover, broken.port, { fenceAttempts: 2 });

    expect(done.state).toBe('done');
    expect(spent.calls.slice(0, 10)).toEqual(['unfence', 'fence', 'catchUp:all', 'transition:drained (fails)', 'unfence', 'transition:fence_timed_out', 'pause', 'catchUp:few', 'transition:caught_up', 'fence']);
    await expect(stopped).rejects.toThrow('the catalog connection was closed');
    expect(broken.calls).not.toContain('transition:fence_timed_out');
  });

  it('releases the fence and goes back to catching up when the verification or the flip runs out of fence budget, then finishes', async () => {
    const slowVerify = recordingPort({ verdicts: ['over_budget'] });
    const slowFlip = recordingPort({ flip: 'over_budget' });
    const at = (state: 'verifying'): Job => ({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state, cancelRequested: false, flipStarted: false });

    const a = await driveMove(at('verifying'), slowVerify.port, { fenceAttempts: 2 });
    const b = await driveMove(at('verifying'), slowFlip.port, { fenceAttempts: 2 });

    const retried = ['unfence', 'transition:verify_timed_out', 'pause', 'catchUp:few', 'transition:caught_up', 'fence', 'catchUp:all', 'transition:drained', 'verify', 'flip', 'releaseFence'];
    expect([a.state, b.state]).toEqual(['done', 'done']);
    expect(slowVerify.calls.slice(0, 2 + retried.length)).toEqual(['unfence', 'verify', ...retried]);
    expect(slowFlip.calls.slice(0, 3 + retried.length)).toEqual(['unfence', 'verify', 'flip', ...retried]);
  });

  it('stops after the last attempt when the verification keeps running out of fence budget, with the fence released', async () => {
    const { port, calls } = recordingPort({ verdicts: ['over_budget', 'over_budget'] });

    const run = driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'verifying', cancelRequested: false, flipStarted: false }, port, { fenceAttempts: 2 });

    await expect(run).rejects.toBeInstanceOf(MoveFenceTimeoutError);
    expect(calls.at(-2)).toBe('unfence');
    expect(calls.at(-1)).toBe('transition:verify_timed_out');
    expect(calls).not.toContain('flip');
  });

  it('never publishes when the flip finds a third owner: it fails, rolled back under the fence; and never rolls back after a flip', async () => {
    const conflict = recordingPort({ flip: 'conflict' });
    const afterFlip = recordingPort();
    const errors: (string | null)[] = [];
    const rollback = conflict.port.rollback.bind(conflict.port);
    conflict.port.rollback = (job, to, error) => (errors.push(error), rollback(job, to, error));

    const refused = await driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'verifying', cancelRequested: false, flipStarted: false }, conflict.port);
    const resumed = await driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'verifying', cancelRequested: true, flipStarted: true }, afterFlip.port);

    // Before: the run threw, the job stayed in verifying, and every later run fenced again.
    expect(refused.state).toBe('failed');
    expect(conflict.calls.slice(-3)).toEqual(['verify', 'flip', 'rollback:failed']);
    expect(errors).toEqual(['someone else']);
    expect(conflict.calls).not.toContain('releaseFence');
    expect(resumed.state).toBe('done');
    expect(afterFlip.calls.filter((c) => c.startsWith('rollback') || c === 'verify' || c === 'flip')).toEqual([]);
  });

  it('fails a move, rolled back without a fence taken, when the fence step finds a third owner before its lock', async () => {
    const { port, calls } = recordingPort();
    const errors: (string | null)[] = [];
    const rollback = port.rollback.bind(port);
    port.rollback = (job, to, error) => (errors.push(error), rollback(job, to, error));
    port.fence = async () => {
      calls.push('fence');
      throw new MoveOwnerConflict('key k was pinned to c');
    };

    const ended = await driveMove({ id: 1, kind: 'directory', unitId: 'k', from: 'a', to: 'b', state: 'cutover', cancelRequested: false, flipStarted: false }, port);

    expect(ended.state).toBe('failed');
    // The unfence is a resumed run's, for a fence its predecessor may have left.
    expect(calls).toEqual(['unfence', 'fence', 'rollback:failed']);
    expect(errors).toEqual(['key k was pinned to c']);
  });

  it('leaves the job resumable, the refusal its error, when the rollback after a third owner is refused', async () => {
    const { port, calls } = recordingPort();
    const recorded: string[] = [];
    port.fence = async () => {
      throw new MoveOwnerConflict('slot 7 was given to c');
    };
    port.rollback = async () => {
      calls.push('rollback');
      throw new MoveError('the catalog names the target b as the owner');
    };
    port.recordError = async (_job, error) => void recorded.push(error);

    const run = driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'cutover', cancelRequested: false, flipStarted: false }, port);

    await expect(run).rejects.toThrow('the catalog names the target b as the owner');
    expect(recorded).toEqual(['cutover: the catalog names the target b as the owner']);
  });

  it('finishes a move whose flip the catalog lost (the port finds it on the source) instead of rolling it back, a cancellation requested since included', async () => {
    const { port, calls } = recordingPort();
    const lost: Job = { id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'verifying', cancelRequested: true, flipStarted: false };
    port.recoverLostFlip = async (job) => (calls.push('recoverLostFlip'), { ...job, flipStarted: true });

    const done = await driveMove(lost, port);

    expect(done.state).toBe('done');
    expect(calls).toEqual(['unfence', 'recoverLostFlip', 'releaseFence', 'transition:flipped', 'cleanUp', 'transition:cleaned']);
  });

  it('goes on under the fence from the job the flip hands back, reading nothing back before it gives the fence up', async () => {
    for (const [flip, end, after] of [
      ['flipped', 'done', 'releaseFence'],
      ['cancelled', 'cancelled', 'rollback:cancelled'],
    ] as const) {
      const { port, calls } = recordingPort({ flip });
      const reload = port.reload;
      port.reload = async (job) => (calls.push('reload'), reload(job));
      // A cancellation the flip found is on the job it hands back.
      const flipped = port.flip;
      port.flip = async (job) => {
        const outcome = await flipped(job);
        return outcome.kind === 'cancelled' ? { ...outcome, job: { ...outcome.job, cancelRequested: true } } : outcome;
      };

      const done = await driveMove(await reload({} as Job), port);

      expect(done.state, flip).toBe(end);
      expect(calls.slice(calls.indexOf('flip'), calls.indexOf(after) + 1), flip).toEqual(['flip', after]);
    }
  });

  it('finishes the move when a cancellation is refused (the catalog routes the unit to the target), at a run\'s start or under the fence, every later transition noting why', async () => {
    for (const [start, flip] of [
      ['catching_up', 'flipped'],
      ['verifying', 'cancelled'],
    ] as const) {
      const { port, calls, job } = recordingPort({ flip });
      const notes: (string | undefined)[] = [];
      const transition = port.transition;
      port.transition = async (j, name, note) => (notes.push(note), transition(j, name, note));
      // The port's refusal clears the request, as the PostgreSQL adapter does in the catalog.
      port.rollback = async (j, to) => {
        calls.push(`rollback:${to}`);
        await port.reload(j).then((now) => Object.assign(now, { cancelRequested: false }));
        throw new MoveCancelRefused('cancel refused: the catalog names the target b');
      };
      // Under the fence, the cancellation is requested while the run verifies: the flip answers it.
      const flipped = port.flip;
      port.flip = async (j) => {
        const outcome = await flipped(j);
        return outcome.kind === 'cancelled' ? { ...outcome, job: Object.assign(outcome.job, { cancelRequested: true }) } : outcome;
      };
      Object.assign(job(), { state: start, cancelRequested: start === 'catching_up' });

      const done = await driveMove({ ...job() }, port);

      // Before: every run threw the refusal and the job never ended, its cancellation still requested.
      expect(done.state, start).toBe('done');
      expect(calls.filter((c) => c.startsWith('rollback')), start).toEqual(['rollback:cancelled']);
      expect(calls.filter((c) => c === 'flip').length, start).toBe(start === 'verifying' ? 2 : 1);
      expect(calls.slice(-3), start).toEqual(['transition:flipped', 'cleanUp', 'transition:cleaned']);
      expect(notes.length > 0 && notes.every((n) => n === 'cancel refused: the catalog names the target b'), start).toBe(true);
    }
  });

  it('finishes a decided rollback with its recorded outcome', async () => {
    const { port, calls } = recordingPort();

    const job = await driveMove({ id: 1, kind: 'slot', unitId: '7', from: 'a', to: 'b', state: 'cutover', cancelRequested: false, flipStarted: false, rollbackTo: 'failed' }, port);

    expect(job.state).toBe('failed');
    expect(calls).toEqual(['rollback:failed']);
  });
});

describe('which units a strategy can move', () => {
  it.each([
    ['hash_based', true, 'hash', 'slot', { ok: true, excludeDirectoryKeys: true }],
    ['hash_based', false, 'hash', 'slot', { ok: true, excludeDirectoryKeys: false }],
    ['hash_based', true, 'hash', 'directory', { ok: true, excludeDirectoryKeys: true }],
    ['directory_based', false, 'hash', 'slot', { ok: true, excludeDirectoryKeys: true }],
    ['directory_based', false, 'hash', 'directory', { ok: true, excludeDirectoryKeys: true }],
  ] as const)('%s (override_hash %s, fallback %s) moves a %s', (strategy, overrideHash, fallback, kind, verdict) => {
    expect(moveUnitFor({ strategy, overrideHash, fallback }, kind)).toEqual(verdict);
  });

  it.each([
    ['range_based', true, 'hash', 'slot', /range_based/],
    ['range_based', true, 'hash', 'directory', /range_based/],
    ['hash_based', false, 'hash', 'directory', /override_hash false/],
    ['directory_based', false, 'reject', 'slot', /fallback reject/],
  ] as const)('%s (override_hash %s, fallback %s) refuses a %s move, naming the strategy', (strategy, overrideHash, fallback, kind, reason) => {
    const verdict = moveUnitFor({ strategy, overrideHash, fallback }, kind);
    expect(verdict.ok).toBe(false);
    expect(verdict.ok ? '' : verdict.reason).toMatch(reason);
  });
});

describe('a move refused because sharding is disabled names what disabled it (issue #15)', () => {
  const doc = { shards: [{ shard_id: 'a', database_url: 'postgresql://a.example.invalid/db' }], default_shard: 'a' };
  const refusal = (routing: Parameters<typeof moveUnitFor>[0]) => {
    const verdict = moveUnitFor(routing, 'slot');
    return verdict.ok ? 'moved' : verdict.reason;
  };

  it('SHARDING_ENABLED=false over a document that enables sharding: the variable', () => {
    const env = { SHARDING_ENABLED: 'false' };
    expect(refusal(moveRoutingOf(loadShardingConfig({ ...doc, enabled: true }, env), env))).toMatch(/^sharding is disabled \(SHARDING_ENABLED=false\): every key routes to default_shard/);
  });

  it('"enabled": false in the document, no variable: the document, by the name it is given, and not SHARDING_ENABLED', () => {
    const reason = refusal(moveRoutingOf(loadShardingConfig({ ...doc, enabled: false }, {}), {}, 'SHARDING_CONFIG_JSON'));
    expect(reason).toMatch(/^sharding is disabled \(SHARDING_CONFIG_JSON's "enabled": false\): /);
    expect(reason).not.toContain('SHARDING_ENABLED');
  });

  it('a routing of unknown origin says only that the routing has enabled false', () => {
    expect(refusal({ strategy: 'hash_based', overrideHash: true, fallback: 'hash', enabled: false })).toMatch(/^sharding is disabled \("enabled": false in the routing\): /);
  });
});
