/**
 * The scaling API over real HTTP (the local adapter serving the Lambda handler), against real
 * PostgreSQL shards with streaming replicas and the controller with mocked AWS clients.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { Validator } from '@seriousme/openapi-schema-validator';
import { UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startLocalServer } from '../../../functions/adapters/http/local-server.js';
import { createScalingRouter } from '../../../functions/api/routes.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { GUIDE_FLAT_CONFIG } from '../../support/guide-config.js';
import { SERVICES, startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';
const JSON_HEADERS = { 'content-type': 'application/json' };

interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  invalid_params?: Array<{ name: string; reason: string }>;
}

describe('scaling API over HTTP', () => {
  let h: ApiHarness;
  beforeAll(async () => {
    h = await startApiHarness();
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  async function etag(): Promise<string> {
    const res = await h.fetchJson(`${API}/config`);
    return res.headers.get('etag') ?? '';
  }

  describe('status and metrics', () => {
    it('reports every service with its ECS counts, bounds and policy', async () => {
      h.counts['worker'] = { running: 4, desired: 5, pending: 1 };
      const res = await h.fetchJson(`${API}/status`);
      const body = res.body as { enabled: boolean; services: Array<Record<string, unknown>> };
      expect(res.status).toBe(200);
      expect(body.enabled).toBe(true);
      expect(body.services.map((s) => s['service'])).toEqual([...SERVICES]);
      expect(body.services.find((s) => s['service'] === 'worker')).toMatchObject({ running: 4, desired: 5, pending: 1, min: 2, max: 10, policy: 'ca-dms' });
    });

    it('shows live CloudWatch metrics and marks a metric without datapoints as missing', async () => {
      h.metricValues['frontend'] = { cpu: 42, mem: 61 };
      const res = await h.fetchJson(`${API}/metrics`);
      const frontend = (res.body as { services: Array<Record<string, { value: number | null; missing: boolean }> & { service: string }> }).services.find(
        (s) => s.service === 'frontend',
      );
      expect(frontend?.['cpu_percent']).toEqual({ value: 42, missing: false });
      expect(frontend?.['response_time_ms']).toEqual({ value: null, missing: true });
    });
  });

  describe('evaluate (dry run)', () => {
    it('says what the controller would do and changes nothing', async () => {
      h.metricValues['backend-read'] = { cpu: 97, mem: 50, rt: 0.2, rpt: 100, err: 0, conn: 100 };
      h.counts['backend-read'] = { running: 3, desired: 3 };
      const before = await h.fetchJson(`${API}/history?limit=200`);
      const updatesBefore = h.mocks.ecs.commandCalls(UpdateServiceCommand).length;
      const res = await h.fetchJson(`${API}/evaluate`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ service: 'backend-read' }) });
      const after = await h.fetchJson(`${API}/history?limit=200`);
      const decision = (res.body as { services: Array<{ service: string; direction: string; would_change: boolean; reasons: unknown[] }> }).services[0];
      expect(res.status).toBe(200);
      expect(decision).toMatchObject({ service: 'backend-read', direction: 'out', would_change: true });
      expect(decision?.reasons.length).toBeGreaterThan(0);
      expect(h.mocks.ecs.commandCalls(UpdateServiceCommand).length).toBe(updatesBefore);
      expect((after.body as { items: unknown[] }).items).toEqual((before.body as { items: unknown[] }).items);
    });

    it('names an unknown service in a 400 problem', async () => {
      const res = await h.fetchJson(`${API}/evaluate`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ service: 'nope' }) });
      expect(res.status).toBe(400);
      expect((res.body as Problem).detail).toContain('known services: backend-read');
    });
  });

  describe('history', () => {
    it('lists decisions newest first, filters them and pages with a cursor', async () => {
      for (let i = 0; i < 3; i++) {
        h.clock.advance(60_000);
        await h.controller.evaluate({ trigger: 'schedule' });
      }
      const worker = await h.fetchJson(`${API}/history?service=worker&kind=decision&limit=2`);
      const page1 = worker.body as { items: Array<{ id: string; at: string; service: string }>; next_cursor: string };
      const page2 = (await h.fetchJson(`${API}/history?service=worker&kind=decision&limit=2&cursor=${page1.next_cursor}`)).body as { items: Array<{ id: string; at: string }> };
      expect(page1.items.every((i) => i.service === 'worker')).toBe(true);
      expect(page1.items.length).toBe(2);
      expect(page2.items.length).toBeGreaterThanOrEqual(1);
      expect(page2.items.map((i) => i.id)).not.toContain(page1.items[0]?.id);
      const times = [...page1.items, ...page2.items].map((i) => Date.parse(i.at));
      expect(times).toEqual([...times].sort((a, b) => b - a));
    });

    it('filters by direction and trigger', async () => {
      const res = await h.fetchJson(`${API}/history?direction=out&trigger=schedule`);
      const items = (res.body as { items: Array<{ direction: string; trigger: string }> }).items;
      expect(items.length).toBeGreaterThan(0);
      expect(items.every((i) => i.direction === 'out' && i.trigger === 'schedule')).toBe(true);
    });

    it('rejects a forged cursor and an inverted time range with 400', async () => {
      const forged = await h.fetchJson(`${API}/history?cursor=bm90LWEtY3Vyc29y`);
      const inverted = await h.fetchJson(`${API}/history?since=2026-11-28T00:00:00Z&until=2026-11-27T00:00:00Z`);
      expect([forged.status, inverted.status]).toEqual([400, 400]);
      expect((forged.body as Problem).invalid_params?.[0]?.name).toBe('query.cursor');
    });

    it('rejects a forged cursor of the right shape whose instant is past a bigint with 400 naming it, not 500', async () => {
      const forged = Buffer.from(JSON.stringify(['99999999999999999999', 'd1']), 'utf8').toString('base64url');
      const res = await h.fetchJson(`${API}/history?cursor=${forged}`);
      expect(res.status).toBe(400);
      expect((res.body as Problem).invalid_params?.[0]?.name).toBe('query.cursor');
    });

    it('reads a time zone offset sent as %2B, and says to send it so when its + arrived as a space', async () => {
      const newest = ((await h.fetchJson(`${API}/history?kind=decision&limit=1`)).body as { items: Array<{ id: string; at: string }> }).items[0];
      const at = Date.parse(newest?.at ?? '');
      // The same instants written at +01:00: one second before the newest decision, and one after.
      const plusOne = (ms: number): string => `${new Date(ms + 3_600_000).toISOString().slice(0, 19)}%2B01:00`;
      const before = await h.fetchJson(`${API}/history?kind=decision&limit=1&since=${plusOne(at - 1000)}`);
      const after = await h.fetchJson(`${API}/history?kind=decision&limit=1&since=${plusOne(at + 1000)}`);
      const unencoded = await h.fetchJson(`${API}/history?since=2026-11-27T11:00:00+01:00`);
      const series = await h.fetchJson(`${API}/timeseries?until=2026-11-27T11:00:00+01:00`);
      expect((before.body as { items: Array<{ id: string }> }).items.map((i) => i.id)).toEqual([newest?.id]);
      expect((after.body as { items: unknown[] }).items).toEqual([]);
      for (const [res, name] of [[unencoded, 'query.since'], [series, 'query.until']] as const) {
        expect(res.status).toBe(400);
        expect((res.body as Problem).invalid_params).toEqual([{ name, reason: expect.stringContaining('send it as %2B') }]);
      }
    });
  });

  describe('time series', () => {
    interface Series {
      since: string;
      until: string;
      step_seconds: number;
      services: Array<{ service: string; points: Array<{ at: string; demand: number | null; cpu: number | null; cpu_max: number | null; tasks: number }>; decisions: Array<{ at: string; direction: string; outcome: string; from: number; to: number; why: string }> }>;
    }

    it('buckets a service\'s demand, CPU and tasks over a window and lists its changes with their reasons', async () => {
      const start = h.clock.now();
      const cpu = h.metricValues['backend-read']?.cpu;
      (h.metricValues['backend-read'] as { cpu: number }).cpu = 96;
      const tasks = h.counts['backend-read'] as { running: number; desired: number };
      for (let i = 0; i < 3; i++) {
        // Past any cooldown, and every task asked for earlier (here or by an earlier test) has
        // started, so each evaluation may scale out.
        h.clock.advance(600_000);
        tasks.running = tasks.desired;
        await h.controller.evaluate({ trigger: 'schedule' });
      }
      (h.metricValues['backend-read'] as { cpu: number }).cpu = cpu ?? 50;
      // One millisecond past the start: earlier tests evaluate on the same fake clock, and a
      // decision recorded exactly at `start` belongs to them, not to this window.
      const since = new Date(start + 1).toISOString();
      const until = new Date(h.clock.now() + 1).toISOString();

      const res = await h.fetchJson(`${API}/timeseries?service=backend-read&since=${since}&until=${until}&step=600`);

      expect(res.status).toBe(200);
      const body = res.body as Series;
      expect(body.step_seconds).toBe(600);
      expect(body.services.map((s) => s.service)).toEqual(['backend-read']);
      const [series] = body.services;
      expect(series?.points).toHaveLength(3);
      expect(series?.points.every((p) => p.cpu === 96 && p.cpu_max === 96 && p.demand !== null && Number.isInteger(p.tasks))).toBe(true);
      expect(series?.decisions.length).toBeGreaterThanOrEqual(1);
      expect(series?.decisions.every((d) => d.direction === 'out' && d.to > d.from && d.why.length > 0)).toBe(true);
      expect(series?.decisions.every((d) => d.at >= since && d.at < until)).toBe(true);
    });

    it('answers every configured service for the last hour by default', async () => {
      const res = await h.fetchJson(`${API}/timeseries`);
      const body = res.body as Series;

      expect(res.status).toBe(200);
      expect(body.services.map((s) => s.service)).toEqual([...SERVICES]);
      expect(Date.parse(body.until) - Date.parse(body.since)).toBe(3_600_000);
      expect(body.step_seconds).toBe(10);
    });

    it('rejects an empty or overlong window, too many buckets and an unknown service with 400 naming the parameter', async () => {
      const [inverted, long, steps, unknown, extra] = await Promise.all([
        h.fetchJson(`${API}/timeseries?since=2026-11-28T00:00:00Z&until=2026-11-27T00:00:00Z`),
        h.fetchJson(`${API}/timeseries?since=2026-11-01T00:00:00Z&until=2026-11-27T00:00:00Z`),
        h.fetchJson(`${API}/timeseries?since=2026-11-26T00:00:00Z&until=2026-11-27T00:00:00Z&step=1`),
        h.fetchJson(`${API}/timeseries?service=nope`),
        h.fetchJson(`${API}/timeseries?window=5`),
      ]);

      expect([inverted.status, long.status, steps.status, unknown.status, extra.status]).toEqual([400, 400, 400, 400, 400]);
      expect((inverted.body as Problem).invalid_params?.[0]?.name).toBe('query.since');
      expect((long.body as Problem).invalid_params?.[0]?.reason).toMatch(/at most 7 days/);
      expect((steps.body as Problem).invalid_params?.[0]).toEqual({ name: 'query.step', reason: 'makes 86400 buckets; at most 2000 (use a step of at least 44 s)' });
      expect((unknown.body as Problem).detail).toMatch(/unknown service nope/);
      expect(JSON.stringify((extra.body as Problem).invalid_params)).toMatch(/window/);
    });
  });

  describe('configuration', () => {
    it('serves the whole configuration with an ETag', async () => {
      const res = await h.fetchJson(`${API}/config`);
      expect(res.status).toBe(200);
      expect(res.headers.get('etag')).toMatch(/^"v\d+"$/);
      expect((res.body as { config: Record<string, unknown> }).config).toMatchObject({ cpu_scale_up: 80, min_instances: 2, max_instances: 10, scale_cooldown: 300 });
    });

    it('requires If-Match on PUT (428) and refuses a stale one (412) before looking at the body', async () => {
      const body = JSON.stringify({ cpu_scale_up: 85 });
      const missing = await h.fetchJson(`${API}/config`, { method: 'PUT', headers: JSON_HEADERS, body });
      const stale = await h.fetchJson(`${API}/config`, { method: 'PUT', headers: { ...JSON_HEADERS, 'if-match': '"v999"' }, body });
      expect([missing.status, stale.status]).toEqual([428, 412]);
    });

    it('refuses a PUT that leaves settings out (422, listing them) and changes nothing', async () => {
      const tag = await etag();
      const empty = await h.fetchJson(`${API}/config`, { method: 'PUT', headers: { ...JSON_HEADERS, 'if-match': tag }, body: '{}' });
      const guide = await h.fetchJson(`${API}/config`, { method: 'PUT', headers: { ...JSON_HEADERS, 'if-match': tag }, body: JSON.stringify(GUIDE_FLAT_CONFIG) });
      const names = ((guide.body as Problem).invalid_params ?? []).map((p) => p.name);
      expect([empty.status, guide.status]).toEqual([422, 422]);
      expect(names).toEqual(expect.arrayContaining(['body.check_interval', 'body.dry_run', 'body.targets', 'body.services']));
      expect(names).not.toContain('body.cpu_scale_up');
      expect((empty.body as Problem).invalid_params?.length).toBeGreaterThan(names.length);
      expect(await etag()).toBe(tag);
    });

    it('replaces the whole configuration with a complete PUT and records who changed it', async () => {
      const current = await h.fetchJson(`${API}/config`);
      const config = { ...(current.body as { config: Record<string, unknown> }).config, max_instances: 12 };
      const res = await h.fetchJson(`${API}/config`, { method: 'PUT', headers: { ...JSON_HEADERS, 'if-match': current.headers.get('etag') ?? '' }, body: JSON.stringify(config) });
      const events = await h.fetchJson(`${API}/history?kind=event&limit=5`);
      expect(res.status).toBe(200);
      expect((res.body as { config: Record<string, unknown> }).config).toEqual(config);
      expect((events.body as { items: Array<{ type: string; actor: string }> }).items[0]).toMatchObject({ type: 'config_changed', actor: 'local:127.0.0.1' });
    });

    it('changes only the settings a merge patch names (PATCH, RFC 7396), and null resets one to its default', async () => {
      const before = (await h.fetchJson(`${API}/config`)).body as { config: Record<string, unknown> };
      const res = await h.fetchJson(`${API}/config`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/merge-patch+json', 'if-match': await etag() },
        body: JSON.stringify({ ...GUIDE_FLAT_CONFIG, max_instances: 11, check_interval: 7, targets: { cpu: 65 } }),
      });
      const reset = await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: '{"check_interval": null}' });
      const after = (res.body as { config: Record<string, unknown> }).config;
      expect(res.status).toBe(200);
      expect(after).toEqual({ ...before.config, ...GUIDE_FLAT_CONFIG, max_instances: 11, check_interval: 7, targets: { ...(before.config['targets'] as object), cpu: 65 } });
      expect((reset.body as { config: Record<string, unknown> }).config).toEqual({ ...after, check_interval: 30 });
    });

    it('takes a merge patch only as application/merge-patch+json (415 with Accept-Patch)', async () => {
      const res = await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: JSON_HEADERS, body: '{"dry_run": true}' });
      expect(res.status).toBe(415);
      expect(res.headers.get('accept-patch')).toBe('application/merge-patch+json');
    });

    it('honours If-Match: * and lists of tags, and refuses weak tags (412) as RFC 9110 requires', async () => {
      const tag = await etag();
      const patch = (ifMatch: string, body: unknown) =>
        h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json', 'if-match': ifMatch }, body: JSON.stringify(body) });
      const weak = await patch(`W/${tag}`, { scale_step: 2 });
      const malformed = await patch('v3', { scale_step: 2 });
      const star = await patch('*', { scale_step: 2 });
      const list = await patch(`"v999", ${star.headers.get('etag') ?? ''}`, { scale_step: 3 });
      const current = (await h.fetchJson(`${API}/config`)).body as { config: { scale_step: number } };
      const complete = { ...current.config };
      const putStar = await h.fetchJson(`${API}/config`, { method: 'PUT', headers: { ...JSON_HEADERS, 'if-match': '*' }, body: JSON.stringify(complete) });
      expect([weak.status, malformed.status, star.status, list.status, putStar.status]).toEqual([412, 400, 200, 200, 200]);
      expect((weak.body as Problem).detail).toMatch(/weak/);
      expect((malformed.body as Problem).invalid_params?.[0]?.name).toBe('headers.if-match');
      expect(current.config.scale_step).toBe(3);
    });

    it('names every invalid path and changes nothing', async () => {
      const tag = await etag();
      const res = await h.fetchJson(`${API}/config`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/merge-patch+json', 'if-match': tag },
        body: JSON.stringify({ min_instances: 20, cpu_scale_down: 95, policy: 'magic', bogus: 1 }),
      });
      const names = ((res.body as Problem).invalid_params ?? []).map((p) => p.name);
      expect(res.status).toBe(400);
      expect(names.sort()).toEqual(['body.bogus', 'body.cpu_scale_down', 'body.min_instances', 'body.policy']);
      expect(await etag()).toBe(tag);
    });

    it('refuses a service the deployment does not scale (a misspelt name) with 422 naming it, and changes nothing', async () => {
      const tag = await etag();
      const patch = await h.fetchJson(`${API}/config`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/merge-patch+json' },
        body: JSON.stringify({ services: { workr: { max_instances: 20 } } }),
      });
      const current = ((await h.fetchJson(`${API}/config`)).body as { config: { services: Record<string, unknown> } }).config;
      const put = await h.fetchJson(`${API}/config`, {
        method: 'PUT',
        headers: { ...JSON_HEADERS, 'if-match': tag },
        body: JSON.stringify({ ...current, services: { ...current.services, 'frontend-2': {} } }),
      });
      const status = (await h.fetchJson(`${API}/status`)).body as { services: Array<{ service: string }> };
      expect([patch.status, put.status]).toEqual([422, 422]);
      expect((patch.body as Problem).invalid_params).toEqual([
        { name: 'body.services.workr', reason: `is not a service this deployment scales (it scales ${[...SERVICES].join(', ')})` },
      ]);
      expect((put.body as Problem).invalid_params?.map((p) => p.name)).toEqual(['body.services.frontend-2']);
      expect(await etag()).toBe(tag);
      expect(status.services.map((s) => s.service)).toEqual([...SERVICES]);
    });

    it('lets exactly one of several concurrent writers with the same If-Match win', async () => {
      const tag = await etag();
      const results = await Promise.all(
        [70, 71, 72, 73, 74].map((cpu) =>
          h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json', 'if-match': tag }, body: JSON.stringify({ cpu_scale_up: cpu }) }),
        ),
      );
      expect(results.map((r) => r.status).sort()).toEqual([200, 412, 412, 412, 412]);
    });

    it('keeps services in name order in /status and /metrics after the configuration was stored', async () => {
      const status = await h.fetchJson(`${API}/status`);
      const metrics = await h.fetchJson(`${API}/metrics`);
      expect((status.body as { services: Array<{ service: string }> }).services.map((s) => s.service)).toEqual([...SERVICES]);
      expect((metrics.body as { services: Array<{ service: string }> }).services.map((s) => s.service)).toEqual([...SERVICES]);
    });

    it('applies every one of several concurrent patches without If-Match, none lost', async () => {
      const results = await Promise.all(
        (['cpu_scale_up', 'memory_scale_up', 'connections_scale_up'] as const).map((key, i) =>
          h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ [key]: 81 + i }) }),
        ),
      );
      const config = ((await h.fetchJson(`${API}/config`)).body as { config: Record<string, number> }).config;
      expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
      expect([config['cpu_scale_up'], config['memory_scale_up'], config['connections_scale_up']]).toEqual([81, 82, 83]);
    });
  });

  describe('concurrent configuration changes', () => {
    it('applies each of 12 concurrent patches without If-Match (200, none lost), never a 412 the client did not ask for', async () => {
      const before = ((await h.fetchJson(`${API}/config`)).body as { version: number }).version;
      const changes = SERVICES.flatMap((service, i) => [
        [service, 'max_instances', 11 + i],
        [service, 'cpu_scale_up', 81 + i],
        [service, 'memory_scale_up', 86 + i],
      ] as const);
      const results = await Promise.all(
        changes.map(([service, key, value]) =>
          h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ services: { [service]: { [key]: value } } }) }),
        ),
      );
      const after = (await h.fetchJson(`${API}/config`)).body as { version: number; config: { services: Record<string, Record<string, number>> } };
      expect(results.map((r) => r.status)).toEqual(changes.map(() => 200));
      expect(changes.map(([service, key]) => after.config.services[service]?.[key])).toEqual(changes.map(([, , value]) => value));
      expect(after.version).toBe(before + changes.length);
      const reset = Object.fromEntries(SERVICES.map((service) => [service, { max_instances: null, cpu_scale_up: null, memory_scale_up: null }]));
      await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ services: reset }) });
    });
  });

  describe('snapshot reads', () => {
    it.each([
      '/status',
      '/metrics',
      '/history?limit=5',
      '/timeseries',
      '/config',
      '/recommendations',
      '/shards/health',
      '/shards/statistics',
      '/shards/rebalance-check',
      '/shards/fences',
      '/openapi.json',
    ])('serves GET %s from a snapshot with its ETag, Age and lifetime, and 304 to a client that has it', async (path) => {
      const first = await h.fetchJson(`${API}${path}`);
      const tag = first.headers.get('etag') ?? '';
      const again = await fetch(`${h.url}${API}${path}`, { headers: { 'if-none-match': tag } });

      expect(first.status).toBe(200);
      expect(tag).toMatch(/^"[\w-]+"$/);
      expect(Number(first.headers.get('age'))).toBeGreaterThanOrEqual(0);
      expect(first.headers.get('cache-control')).toMatch(/^private, max-age=\d+$/);
      expect(again.status).toBe(304);
      expect(await again.text()).toBe('');
    });

    it('shows a configuration change made through the API in the very next GET /config and its ETag', async () => {
      const before = await h.fetchJson(`${API}/config`);

      const patched = await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ check_interval: 45 }) });
      const after = await h.fetchJson(`${API}/config`);

      expect(patched.status).toBe(200);
      expect(after.headers.get('etag')).toBe(patched.headers.get('etag'));
      expect(after.headers.get('etag')).not.toBe(before.headers.get('etag'));
      expect((after.body as { config: { check_interval: number } }).config.check_interval).toBe(45);
      const restore = { check_interval: (before.body as { config: { check_interval: number } }).config.check_interval };
      await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify(restore) });
    });

    it('shows a change made through the API in the very next status, snapshot or not', async () => {
      await h.fetchJson(`${API}/status`);

      await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ reason: 'snapshot check' }) });
      const stopped = await h.fetchJson(`${API}/status`);
      await h.fetchJson(`${API}/start`, { method: 'POST' });
      const started = await h.fetchJson(`${API}/status`);

      expect((stopped.body as { enabled: boolean }).enabled).toBe(false);
      expect((started.body as { enabled: boolean }).enabled).toBe(true);
    });
  });

  describe('start and stop', () => {
    it('stops globally, idempotently, and records each call with its caller', async () => {
      const first = await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ reason: 'maintenance' }) });
      const second = await h.fetchJson(`${API}/stop`, { method: 'POST' });
      const status = await h.fetchJson(`${API}/status`);
      const events = await h.fetchJson(`${API}/history?kind=event&limit=2`);
      expect(first.body).toEqual({ scope: 'global', enabled: false, changed: true });
      expect(second.body).toEqual({ scope: 'global', enabled: false, changed: false });
      expect((status.body as { enabled: boolean; next_evaluation_at: string | null }).enabled).toBe(false);
      expect((events.body as { items: Array<{ type: string; actor: string }> }).items.map((i) => i.type)).toEqual(['stopped', 'stopped']);
      await h.fetchJson(`${API}/start`, { method: 'POST' });
    });

    it('answers changed: true to exactly one of 8 concurrent starts, as the history records', async () => {
      await h.fetchJson(`${API}/stop`, { method: 'POST' });
      const results = await Promise.all(Array.from({ length: 8 }, () => h.fetchJson(`${API}/start`, { method: 'POST' })));
      const events = await h.fetchJson(`${API}/history?kind=event&limit=8`);
      const changed = results.filter((r) => (r.body as { changed: boolean }).changed);
      expect(results.map((r) => r.status)).toEqual(Array.from({ length: 8 }, () => 200));
      expect(changed).toHaveLength(1);
      expect((events.body as { items: Array<{ type: string }> }).items.map((i) => i.type)).toEqual(Array.from({ length: 8 }, () => 'started'));
    });

    it('stops one service, and the controller leaves it alone', async () => {
      await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ service: 'worker' }) });
      h.clock.advance(60_000);
      const result = await h.controller.evaluate({ trigger: 'schedule' });
      const status = await h.fetchJson(`${API}/status`);
      expect(result.decisions.map((d) => d.service)).not.toContain('worker');
      expect((status.body as { services: Array<{ service: string; enabled: boolean }> }).services.find((s) => s.service === 'worker')?.enabled).toBe(false);
      await h.fetchJson(`${API}/start`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ service: 'worker' }) });
    });
  });

  describe('recommendations', () => {
    it('advises on thresholds that are too close, with evidence', async () => {
      await h.fetchJson(`${API}/config`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/merge-patch+json', 'if-match': await etag() },
        body: JSON.stringify({ cpu_scale_up: 80, cpu_scale_down: 70 }),
      });
      const res = await h.fetchJson(`${API}/recommendations`);
      const items = (res.body as { items: Array<{ category: string; evidence: Record<string, unknown> }> }).items;
      const close = items.find((i) => i.category === 'thresholds_close');
      expect(res.status).toBe(200);
      expect(close?.evidence).toMatchObject({ metric: 'cpu', scale_up: 80, scale_down: 70 });
    });
  });

  describe('shards', () => {
    it('reports every primary and replica healthy', async () => {
      const res = await h.fetchJson(`${API}/shards/health`);
      type Node = { nodeId: string; status: string; reasons: Array<{ code: string }> };
      const report = res.body as { shards: Array<{ status: string; primary: Node; replicas: Node[] }> };
      expect(res.status).toBe(200);
      expect(report.shards).toHaveLength(2);
      // With the reasons, so a failure says why a node is not healthy.
      const nodes = report.shards.flatMap((s) => [s.primary, ...s.replicas]).map((n) => `${n.nodeId} ${n.status} ${n.reasons.map((r) => r.code).join(',')}`.trim());
      expect(nodes).toEqual(['shard_001/primary healthy', 'shard_001/replica-1 healthy', 'shard_002/primary healthy', 'shard_002/replica-1 healthy']);
    });

    it('reports statistics and a rebalance check', async () => {
      const stats = await h.fetchJson(`${API}/shards/statistics?exact=true`);
      const check = await h.fetchJson(`${API}/shards/rebalance-check?threshold=0.2&by=rows`);
      expect(stats.status).toBe(200);
      expect((stats.body as { shards: unknown[] }).shards).toHaveLength(2);
      expect(check.status).toBe(200);
      expect(check.body).toMatchObject({ by: 'rows', threshold: 0.2 });
    });

    it('measures the shards once for parallel rebalance checks of different thresholds and metrics, not once each', async () => {
      const asks = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35].flatMap((threshold) => (['bytes', 'rows'] as const).map((by) => ({ threshold, by })));
      // What every check reads before it measures: counted once settled.
      const reads = [vi.spyOn(h.sharding.slotMaps, 'current'), vi.spyOn(h.sharding.directory, 'all'), vi.spyOn(h.sharding.mover, 'unfinished')];
      // Each measurement of the shards (one scan of their tables) takes a connection of every shard's primary once.
      const connects = vi.spyOn(pg.Pool.prototype, 'connect');
      // The measurement of shard_001 waits on this lock: every check is asked while it runs.
      const blocker = new pg.Client({ connectionString: h.cluster.config.shards[0]?.database_url });
      await blocker.connect();
      let checks;
      let shardConnects;
      try {
        await blocker.query('begin');
        await blocker.query('lock table documents in access exclusive mode');
        const asked = Promise.all(asks.map((ask) => h.port.rebalanceCheck(ask)));
        const settled = async (spy: (typeof reads)[number]): Promise<number> => (await Promise.allSettled(spy.mock.results.map((r) => r.value))).length;
        await vi.waitFor(async () => {
          for (const spy of reads) expect(await settled(spy)).toBe(asks.length);
        });
        await new Promise((r) => setImmediate(r));
        await blocker.query('commit');
        checks = await asked;
        shardConnects = connects.mock.contexts.filter((pool) => pool !== h.catalogPool).length;
      } finally {
        await blocker.end();
        connects.mockRestore();
        for (const spy of reads) spy.mockRestore();
      }

      expect(checks.map((c) => [c.threshold, c.by])).toEqual(asks.map((a) => [a.threshold, a.by]));
      expect(shardConnects).toBe(2);
    });

    it('rejects a rebalance threshold of 1 or more with 400 naming the parameter', async () => {
      const res = await h.fetchJson(`${API}/shards/rebalance-check?threshold=1`);
      expect(res.status).toBe(400);
      expect((res.body as Problem).invalid_params?.[0]?.name).toBe('query.threshold');
    });

    it('routes a key to its shard, slot and map version', async () => {
      const key = '7d0c2a4e-52a5-4a55-9d40-8d2d3b1e0f11';
      const res = await h.fetchJson(`${API}/shards/route?key=${key}`);
      expect(res.body).toMatchObject({ key, slot: slotOf(key), map_version: 1, strategy: 'hash_based', source: 'hash' });
    });

    it('routes a user id in any UUID form as its canonical form, and refuses a user id that is not a UUID with 400 naming query.key', async () => {
      const key = '7d0c2a4e-52a5-4a55-9d40-8d2d3b1e0f11';
      const upper = await h.fetchJson(`${API}/shards/route?kind=user&key=${key.toUpperCase()}`);
      const owner = await h.fetchJson(`${API}/shards/route?kind=document_owner&key=urn:uuid:${key}`);
      const notUuid = await h.fetchJson(`${API}/shards/route?kind=user&key=user-1`);
      const anyKey = await h.fetchJson(`${API}/shards/route?kind=key&key=user-1`);
      expect([upper.status, owner.status, anyKey.status]).toEqual([200, 200, 200]);
      expect(upper.body).toMatchObject({ key, slot: slotOf(key) });
      expect(owner.body).toMatchObject({ key, slot: slotOf(key) });
      expect(notUuid.status).toBe(400);
      expect((notUuid.body as Problem).invalid_params).toEqual([{ name: 'query.key', reason: expect.stringMatching(/is not a UUID, which a user id is/) }]);
    });

    it('starts a slot move and follows it to done', async () => {
      const key = '0b7f6a39-2a51-4cf4-8f2e-3b0c1a9d2e44';
      const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
      const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
      const started = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
      const location = started.headers.get('location') ?? '';
      let state = '';
      for (let i = 0; i < 100 && state !== 'done'; i++) {
        state = ((await h.fetchJson(location)).body as { state: string }).state;
        if (state !== 'done') await new Promise((r) => setTimeout(r, 100));
      }
      const after = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; map_version: number };
      expect(started.status).toBe(202);
      expect(state).toBe('done');
      expect(after).toMatchObject({ shard_id: to, map_version: 2 });
    });

    it('refuses a move to an unknown shard or to the unit\'s own shard with 422 naming body.to, and records no job', async () => {
      const key = '5d1c0e7a-6b3f-4a8e-9c2d-7e6f5a4b3c21';
      const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
      const unknown = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to: 'shard_999' }) });
      const own = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to: route.shard_id }) });
      expect([unknown.status, own.status]).toEqual([422, 422]);
      expect(unknown.body).toMatchObject({ detail: expect.stringMatching(/target shard shard_999 is not one of/), invalid_params: [{ name: 'body.to' }] });
      expect(own.body).toMatchObject({ detail: expect.stringMatching(new RegExp(`slot ${route.slot} is already on ${route.shard_id}`)), invalid_params: [{ name: 'body.to' }] });
    });

    it('refuses a slot number out of range and a directory key that is not a UUID with 400 naming body.unit, and records no job', async () => {
      const jobs = async (): Promise<number> => Number((await h.catalogPool.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);
      const before = await jobs();
      const outOfRange = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: '4096', to: 'shard_002' }) });
      const notUuid = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'directory', unit: 'tenant-42', to: 'shard_002' }) });
      expect([outOfRange.status, notUuid.status]).toEqual([400, 400]);
      // The mover's own names for the unit (slot, key) are not fields of this API.
      expect(outOfRange.body).toMatchObject({ detail: 'body.unit: must be a slot number from 0 to 4095', invalid_params: [{ name: 'body.unit', reason: 'must be a slot number from 0 to 4095' }] });
      expect(notUuid.body).toMatchObject({ detail: expect.stringMatching(/^body\.unit: directory keys are user ids \(UUIDs\)/), invalid_params: [{ name: 'body.unit' }] });
      expect(JSON.stringify([outOfRange.body, notUuid.body])).not.toMatch(/\bkey:|\bslot:/);
      expect(await jobs()).toBe(before);
    });

    it('lists the shard directory a page at a time, following next_cursor to the end', async () => {
      const keys = ['dir-page-a', 'dir-page-b', 'dir-page-c'];
      for (const key of keys) await h.sharding.directory.set(key, 'shard_002', 'api-test');
      const first = await h.fetchJson(`${API}/shards/directory?shard=shard_002&limit=2`);
      const page1 = first.body as { items: Array<{ key: string; shard_id: string }>; next_cursor: string | null };
      const second = await h.fetchJson(`${API}/shards/directory?shard=shard_002&limit=2&cursor=${page1.next_cursor ?? ''}`);
      const page2 = second.body as typeof page1;
      expect([first.status, second.status]).toEqual([200, 200]);
      expect([...page1.items, ...page2.items].map((i) => i.key)).toEqual(keys);
      expect(page1.items[0]).toMatchObject({ shard_id: 'shard_002', updated_by: 'api-test' });
      expect(page2.next_cursor).toBeNull();
    });

    it('refuses a cursor it did not hand out, and a page over 1,000, with 400 naming the parameter', async () => {
      const cursor = await h.fetchJson(`${API}/shards/directory?cursor=not-ours`);
      const limit = await h.fetchJson(`${API}/shards/directory?limit=1001`);
      expect([cursor.status, limit.status]).toEqual([400, 400]);
      expect((cursor.body as Problem).invalid_params?.[0]?.name).toBe('query.cursor');
      expect((limit.body as Problem).invalid_params?.[0]?.name).toBe('query.limit');
    });

    it('refuses a forged cursor whose key PostgreSQL cannot compare (a NUL, bytes that are not UTF-8) with 400 naming it, not 500', async () => {
      const forged = [Buffer.from('k:\u0000', 'utf8'), Buffer.concat([Buffer.from('k:', 'utf8'), Buffer.from([0xff, 0xfe])])].map((b) => b.toString('base64url'));
      const answers = await Promise.all(forged.map((c) => h.fetchJson(`${API}/shards/directory?cursor=${c}`)));
      expect(answers.map((a) => a.status)).toEqual([400, 400]);
      expect(answers.map((a) => (a.body as Problem).invalid_params?.[0]?.name)).toEqual(['query.cursor', 'query.cursor']);
    });

    it('answers 404 for a move that does not exist', async () => {
      const res = await h.fetchJson(`${API}/shards/moves/424242`);
      expect(res.status).toBe(404);
    });
  });

  describe('protocol errors', () => {
    it('answers unknown routes 404 and wrong methods 405 with Allow', async () => {
      const unknown = await h.fetchJson(`${API}/nothing-here`);
      const wrong = await h.fetchJson(`${API}/status`, { method: 'DELETE' });
      expect(unknown.status).toBe(404);
      expect(wrong.status).toBe(405);
      expect(wrong.headers.get('allow')).toBe('GET, HEAD');
      expect(wrong.headers.get('content-type')).toBe('application/problem+json');
    });

    it('lists HEAD in the Allow of a 405 wherever GET is allowed, since HEAD is served there', async () => {
      const wrong = await h.fetchJson(`${API}/config`, { method: 'DELETE' });
      const head = await fetch(`${h.url}${API}/config`, { method: 'HEAD' });
      expect(wrong.status).toBe(405);
      expect(wrong.headers.get('allow')).toBe('GET, HEAD, PATCH, PUT');
      expect(head.status).toBe(200);
    });

    it('answers non-JSON 415, malformed JSON 400 and oversized bodies 413', async () => {
      const text = await h.fetchJson(`${API}/stop`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'stop please' });
      const broken = await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: '{"service":' });
      const huge = await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ reason: 'x'.repeat(100_000) }) });
      expect([text.status, broken.status, huge.status]).toEqual([415, 400, 413]);
    });

    /** Local mode's way of serving the API: the route table straight from the adapter, no Lambda handler. */
    async function withLocalMode(work: (url: string) => Promise<void>): Promise<void> {
      const router = createScalingRouter(h.port);
      const local = await startLocalServer({ dispatch: (request) => router.dispatch(request), changes: router.changes, port: 0 });
      try {
        await work(local.url);
      } finally {
        await local.close();
      }
    }

    it('answers HEAD with the Content-Length GET would send, and no body, in local mode as through the Lambda handler', async () => {
      await withLocalMode(async (localUrl) => {
        for (const [url, path] of [h.url, localUrl].flatMap((base) => ['status', 'config', 'shards/health'].map((p) => [base, p] as const))) {
          const get = await fetch(`${url}${API}/${path}`);
          const body = Buffer.from(await get.arrayBuffer());
          const head = await fetch(`${url}${API}/${path}`, { method: 'HEAD' });
          expect([path, head.status, head.headers.get('content-length'), head.headers.get('etag'), (await head.arrayBuffer()).byteLength]).toEqual([
            path,
            200,
            String(body.length),
            get.headers.get('etag'),
            0,
          ]);
        }
      });
    });

    it('refuses a query parameter given more than once with 400 naming it, in local mode as through the Lambda handler, whichever value comes last', async () => {
      await withLocalMode(async (localUrl) => {
        for (const base of [h.url, localUrl]) {
          for (const query of ['service=worker&service=frontend', 'limit=500&limit=5', 'limit=5&kind=event&limit=5']) {
            const res = await fetch(`${base}${API}/history?${query}`);
            const problem = (await res.json()) as Problem;
            expect([base === h.url ? 'lambda' : 'local', query, res.status, problem.invalid_params]).toEqual([
              base === h.url ? 'lambda' : 'local',
              query,
              400,
              [{ name: `query.${query.split('=')[0] ?? ''}`, reason: 'is given more than once; give each query parameter once' }],
            ]);
          }
        }
      });
    });

    it('never shows a stack trace or a connection string', async () => {
      const res = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: '1', to: 'shard_999' }) });
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).toBeLessThan(500);
      expect(JSON.stringify(res.body)).not.toMatch(/postgresql:\/\/|at .*\.ts:\d+/);
    });
  });

  describe('bodies taken as sent or refused, never changed silently', () => {
    const MERGE = { 'content-type': 'application/merge-patch+json' };
    const version = async (): Promise<number> => ((await h.fetchJson(`${API}/config`)).body as { version: number }).version;

    it('refuses a body that is not UTF-8 (400) rather than record U+FFFD in place of its bytes', async () => {
      const before = await h.fetchJson(`${API}/history?kind=event&limit=1`);
      const latin1 = Buffer.concat([Buffer.from('{"service": "worker", "reason": "caf'), Buffer.from([0xe9]), Buffer.from('"}')]);
      const res = await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: latin1 });
      const after = await h.fetchJson(`${API}/history?kind=event&limit=1`);
      const status = await h.fetchJson(`${API}/status`);

      expect({ status: res.status, detail: (res.body as Problem).detail }).toEqual({ status: 400, detail: expect.stringMatching(/^the request body is not valid UTF-8/) as unknown as string });
      expect(after.body).toEqual(before.body);
      expect((status.body as { services: Array<{ service: string; enabled: boolean }> }).services.find((s) => s.service === 'worker')?.enabled).toBe(true);
    });

    it('refuses a body that starts with a byte order mark with a 400 that says so, not an invisible unexpected token', async () => {
      const res = await h.fetchJson(`${API}/stop`, { method: 'POST', headers: JSON_HEADERS, body: '\ufeff{"service": "worker"}' });

      expect({ status: res.status, detail: (res.body as Problem).detail }).toEqual({ status: 400, detail: expect.stringMatching(/^the request body starts with a byte order mark \(U\+FEFF\)/) as unknown as string });
    });

    it.each([
      ['1e-400', 'it would become 0'],
      ['300.0000000000000000001', 'it would become 300'],
    ])('refuses a setting %s that JSON.parse reads as another number (400 naming it), changing nothing', async (n, becomes) => {
      const before = await version();
      const res = await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: MERGE, body: `{"scale_cooldown": ${n}}` });

      expect({ status: res.status, invalid: (res.body as Problem).invalid_params }).toEqual({ status: 400, invalid: [{ name: 'body.scale_cooldown', reason: expect.stringContaining(becomes) as unknown as string }] });
      expect(await version()).toBe(before);
    });

    it.each([
      ['{"__proto__": {"scale_cooldown": 5}, "scale_cooldown": 301}', 'body.__proto__'],
      ['{"services": {"__proto__": {"min_instances": 5}}}', /^body\.services\.__proto__/],
    ])('names a member __proto__ (%s) as any unknown setting (400), rather than drop it unseen', async (patch, field) => {
      const before = await version();
      const res = await h.fetchJson(`${API}/config`, { method: 'PATCH', headers: MERGE, body: patch });

      expect({ status: res.status, name: (res.body as Problem).invalid_params?.[0]?.name }).toEqual({ status: 400, name: expect.stringMatching(field) as unknown as string });
      expect(await version()).toBe(before);
    });
  });

  it('serves a valid OpenAPI 3 document', async () => {
    const res = await h.fetchJson(`${API}/openapi.json`);
    const result = await new Validator().validate(res.body as Parameters<Validator['validate']>[0]);
    expect(result.errors ?? []).toEqual([]);
  });
});
