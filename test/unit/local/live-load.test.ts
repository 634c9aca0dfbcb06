import { describe, expect, it } from 'vitest';
import { LiveLoad, servicesLoadedBy } from '../../../functions/adapters/sim/live-load.js';

describe('live load', () => {
  it('charges document reads to the read pool, writes to the write pool and the worker, both to the frontend, and nothing else', () => {
    expect(servicesLoadedBy('GET', '/api/v1/documents/abc')).toEqual(['frontend', 'backend-read']);
    expect(servicesLoadedBy('GET', '/api/v1/users')).toEqual(['frontend', 'backend-read']);
    expect(servicesLoadedBy('POST', '/api/v1/documents')).toEqual(['frontend', 'backend-write', 'worker']);
    expect(servicesLoadedBy('GET', '/api/v1/scaling/status')).toEqual([]);
    expect(servicesLoadedBy('GET', '/')).toEqual([]);
    expect(servicesLoadedBy('GET', '/api/v1/documentsx')).toEqual([]);
  });

  it('averages the requests of the full seconds in its window and turns them into busy tasks', () => {
    let now = 1_000_000;
    const load = new LiveLoad({ clock: { now: () => now }, requestsPerTask: 20, windowSeconds: 10 });
    for (let second = 0; second < 10; second++) {
      for (let i = 0; i < 40; i++) load.record('GET', '/api/v1/documents/x');
      now += 1000;
    }

    expect(load.rate('backend-read', now)).toBe(40);
    expect(load.taskUnits('backend-read', now)).toBe(2);
    expect(load.rate('backend-write', now)).toBe(0);
    // Ten seconds later the window holds none of it: the demand is gone.
    expect(load.taskUnits('backend-read', now + 10_000)).toBe(0);
  });

  it('refuses a non-positive task capacity', () => {
    expect(() => new LiveLoad({ clock: { now: () => 0 }, requestsPerTask: 0 })).toThrow(RangeError);
  });
});
