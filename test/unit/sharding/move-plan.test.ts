import { describe, expect, it } from 'vitest';
import {
  assertTransition,
  canCancel,
  canTransition,
  MOVE_STATES,
  MoveTransitionError,
  nextState,
  restartAction,
  TERMINAL_STATES,
} from '../../../functions/core/sharding/move-plan.js';

describe('move state machine', () => {
  it('walks the forward path from planned to done one step at a time', () => {
    const path = ['planned'];
    let s = nextState('planned');
    while (s) {
      path.push(s);
      s = nextState(s);
    }
    expect(path).toEqual(['planned', 'copying', 'catching_up', 'cutover', 'verifying', 'cleaning_up', 'done']);
  });

  it('refuses to skip a step', () => {
    expect(canTransition('copying', 'cutover')).toBe(false);
    expect(() => assertTransition('copying', 'done')).toThrow(/the step after copying is catching_up/);
  });

  it('lets every state before the flip fail or be cancelled', () => {
    for (const s of ['planned', 'copying', 'catching_up', 'cutover', 'verifying'] as const) {
      expect(canTransition(s, 'cancelled')).toBe(true);
      expect(canTransition(s, 'failed')).toBe(true);
    }
  });

  it('allows only forward moves once the flip has started', () => {
    expect(canTransition('verifying', 'cancelled', true)).toBe(false);
    expect(canTransition('cleaning_up', 'failed', true)).toBe(false);
    expect(canTransition('verifying', 'cleaning_up', true)).toBe(true);
    expect(() => assertTransition('verifying', 'cancelled', true)).toThrow(MoveTransitionError);
  });

  it('never leaves a terminal state', () => {
    for (const from of TERMINAL_STATES) for (const to of MOVE_STATES) expect(canTransition(from, to)).toBe(false);
  });

  it('resumes an unfinished job from the step it was in', () => {
    for (const s of ['planned', 'copying', 'catching_up', 'cutover', 'verifying', 'cleaning_up'] as const) {
      expect(restartAction({ state: s, cancelRequested: false, flipStarted: s === 'cleaning_up' })).toEqual({ kind: 'resume', from: s });
    }
  });

  it('carries out a requested cancellation on restart, unless the flip had started', () => {
    expect(restartAction({ state: 'catching_up', cancelRequested: true, flipStarted: false })).toEqual({ kind: 'rollback', to: 'cancelled' });
    expect(restartAction({ state: 'verifying', cancelRequested: true, flipStarted: true })).toEqual({ kind: 'resume', from: 'verifying' });
  });

  it('does nothing with a finished job', () => {
    expect(restartAction({ state: 'done', cancelRequested: false, flipStarted: true })).toEqual({ kind: 'none' });
  });

  it('accepts cancellation only before the flip', () => {
    expect(canCancel({ state: 'cutover', flipStarted: false })).toBe(true);
    expect(canCancel({ state: 'verifying', flipStarted: true })).toBe(false);
    expect(canCancel({ state: 'done', flipStarted: true })).toBe(false);
  });
});
