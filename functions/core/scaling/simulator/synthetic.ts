/**
 * Synthetic workload shapes for tests and tuning (spikes, ramps, daily cycles, noise), so that
 * nothing depends on the real traces being present. Randomness is injected.
 */
import type { TracePoint } from './trace.js';

export type Shape =
  /** A flat base with rectangular bursts. */
  | { readonly kind: 'spikes'; readonly base: number; readonly height: number; readonly every: number; readonly width: number }
  /** A linear rise from `from` to `to` over `minutes`, then flat. */
  | { readonly kind: 'ramp'; readonly from: number; readonly to: number; readonly start: number; readonly minutes: number }
  /** A sinusoidal daily cycle between `low` and `high`, peaking at `peakMinute` of the day. */
  | { readonly kind: 'daily'; readonly low: number; readonly high: number; readonly peakMinute: number }
  /** A step from `from` to `to` at minute `at`. */
  | { readonly kind: 'step'; readonly from: number; readonly to: number; readonly at: number };

const DAY = 1440;

/**
 * The shape's value at minute `m` (before noise).
 *
 * @example
 * ```ts
 * shapeAt({ kind: 'step', from: 2, to: 7, at: 600 }, 601); // 7
 * ```
 */
export function shapeAt(shape: Shape, m: number): number {
  switch (shape.kind) {
    case 'spikes':
      return m % shape.every < shape.width && m >= shape.every ? shape.base + shape.height : shape.base;
    case 'ramp': {
      const f = Math.min(1, Math.max(0, (m - shape.start) / shape.minutes));
      return shape.from + f * (shape.to - shape.from);
    }
    case 'daily': {
      const phase = (2 * Math.PI * (m - shape.peakMinute)) / DAY;
      return shape.low + ((shape.high - shape.low) * (1 + Math.cos(phase))) / 2;
    }
    case 'step':
      return m < shape.at ? shape.from : shape.to;
  }
}

/**
 * A per-minute trace of `minutes` points following `shape`, with multiplicative noise of
 * relative size `noise` (uniform in [-noise, +noise]) drawn from `random`.
 *
 * @example
 * ```ts
 * const points = syntheticTrace({ kind: 'daily', low: 1, high: 8, peakMinute: 840 }, 3 * 1440, { noise: 0.1, random: mulberry32(7) });
 * ```
 */
export function syntheticTrace(
  shape: Shape,
  minutes: number,
  options: { readonly noise?: number; readonly random?: () => number; readonly startAt?: number } = {},
): TracePoint[] {
  const noise = options.noise ?? 0;
  const random = options.random;
  if (noise > 0 && random === undefined) throw new RangeError('noise needs an injected random source');
  const startAt = options.startAt ?? Date.UTC(2026, 0, 5);
  const points: TracePoint[] = [];
  for (let m = 0; m < minutes; m++) {
    const jitter = noise > 0 && random ? 1 + noise * (2 * random() - 1) : 1;
    points.push({ at: startAt + m * 60_000, value: Math.max(0, shapeAt(shape, m) * jitter) });
  }
  return points;
}
