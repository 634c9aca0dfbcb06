/**
 * The status lines local mode prints as decisions happen: compact, and only what changed.
 */
import { describe, expect, it } from 'vitest';
import type { DecisionRecord } from '../../../functions/core/scaling/ports.js';
import { decisionPrinter, formatDecision } from '../../../functions/local/runtime.js';

function decision(overrides: Partial<DecisionRecord>): DecisionRecord {
  return {
    at: Date.parse('2026-11-27T09:45:11Z'),
    service: 'backend-read',
    trigger: 'schedule',
    policy: 'ca-dms',
    from: 4,
    to: 6,
    direction: 'out',
    reasons: [{ metric: 'cpu', value: 95, threshold: 80, rule: 'cpu_above_scale_up', message: 'CPU 95% is above 80%' }],
    blocked: [],
    metrics: null,
    dryRun: false,
    outcome: 'applied',
    degraded: false,
    ...overrides,
  };
}

describe('decision lines', () => {
  it('prints time, service, the change, the outcome and the reason on one line', () => {
    expect(formatDecision(decision({}))).toBe('09:45:11  backend-read  4 -> 6   applied  CPU 95% is above 80%');
  });

  it('cuts a long reason to keep the line compact', () => {
    const line = formatDecision(decision({ reasons: [{ metric: 'cpu', rule: 'r', message: 'x'.repeat(300) }] }));

    expect(line.length).toBeLessThan(160);
    expect(line.endsWith('…')).toBe(true);
  });

  it('prints every change but a repeated hold-back only once, and nothing for "no change"', () => {
    const lines: string[] = [];
    const log = decisionPrinter((l) => lines.push(l));
    const held = decision({ from: 6, to: 6, outcome: 'blocked', blocked: [{ kind: 'cooldown', message: 'in cooldown' }] });

    log.write(decision({}));
    log.write(held);
    log.write(held);
    log.write(decision({ from: 6, to: 6, outcome: 'unchanged', reasons: [] }));
    log.write(held);

    expect(lines.map((l) => /\b(applied|blocked|unchanged)\b/.exec(l)?.[1])).toEqual(['applied', 'blocked', 'blocked']);
  });
});
