/**
 * The live dashboard in a real browser: Debian's headless Chromium driven by playwright-core,
 * against local mode running as a child process. A failing test leaves a screenshot in a
 * temporary directory and prints its path.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { getJson, startLocalProcess, type LocalProcess } from './support/local-process.js';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const SERVICES = ['backend-read', 'backend-write', 'frontend', 'worker'];

describe('the local dashboard', () => {
  let local: LocalProcess | undefined;
  let browser: BrowserContext | undefined;
  let profile: string;
  let shots: string;
  let screenshots = 0;
  let page: Page;
  const problems: string[] = [];

  beforeAll(async () => {
    profile = await mkdtemp(join(tmpdir(), 'ca-dms-chromium-'));
    shots = await mkdtemp(join(tmpdir(), 'ca-dms-dashboard-shots-'));
    // Both started at once; each one that started is kept for afterAll to stop, even when the
    // other failed (Promise.all would drop a local-mode process, leaving it and its PostgreSQL
    // running after the suite).
    const [started, launched] = await Promise.allSettled([
      startLocalProcess({ args: ['--seed-users', '20', '--acceleration', '600'], env: { SCALING_CHECK_INTERVAL: '1' } }),
      chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS }),
    ]);
    if (started.status === 'fulfilled') local = started.value;
    if (launched.status === 'fulfilled') browser = launched.value;
    if (started.status === 'rejected') throw started.reason;
    if (launched.status === 'rejected') throw launched.reason;
    const url = started.value.url;
    page = await launched.value.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('request', (r) => {
      if (!r.url().startsWith(local?.url ?? '')) problems.push(`fetched ${r.url()}`);
    });
    await page.goto(`${url}/`);
  });

  afterAll(async () => {
    await browser?.close();
    await local?.stop('SIGTERM');
    await local?.remove();
    await rm(profile, { recursive: true, force: true });
    // Screenshots of failures stay for the reader; an unused directory goes.
    if (screenshots === 0) await rm(shots, { recursive: true, force: true });
  });

  /** Screenshots the page when the running test fails. */
  function screenshotOnFailure(name: string): void {
    onTestFailed(async () => {
      const path = join(shots, `${name}.png`);
      await page.screenshot({ path, fullPage: true });
      screenshots += 1;
      console.error(`dashboard screenshot: ${path}`);
    });
  }

  type Doc = { document: { querySelector(s: string): { getAttribute(n: string): string | null } | null } };
  /** Waits until the service's chart has drawn at least `n` points. */
  const pointsAtLeast = (on: Page, service: string, n: number) =>
    on.waitForFunction(([s, k]) => Number((globalThis as unknown as Doc).document.querySelector(`.series-chart[data-service="${s}"]`)?.getAttribute('data-points') ?? 0) >= Number(k), [service, String(n)] as const, { timeout: 20_000 });
  type Charts = { dashboardCharts: Map<string, { axes: Array<{ label?: string }>; series: Array<{ label?: string }>; data: number[][]; valToPos(v: number, scale: string): number; over: { getBoundingClientRect(): { left: number; top: number } } }> };

  it('draws a chart per service with labelled time and value axes, demand, CPU and tasks, and marks decisions', async () => {
    screenshotOnFailure('charts');

    for (const service of SERVICES) {
      await pointsAtLeast(page, service, 2);
    }
    await page.waitForSelector('.series-chart[data-decisions]:not([data-decisions="0"])', { timeout: 20_000 });
    const charts = await page.evaluate(() =>
      [...(globalThis as unknown as Charts).dashboardCharts.entries()].map(([service, u]) => ({ service, axes: u.axes.map((a) => a.label), series: u.series.slice(1).map((x) => x.label) })),
    );
    await page.waitForSelector('#decisions tbody tr[data-outcome]', { timeout: 20_000 });
    const reason = await page.locator('#decisions tbody tr[data-outcome] td').nth(4).textContent();

    expect(charts.map((c) => c.service).sort()).toEqual(SERVICES);
    for (const c of charts) {
      expect(c.axes).toEqual(['time', 'tasks', 'CPU %', 'requests/min']);
      expect(c.series).toEqual(['demand (requests/min)', 'CPU %', 'desired tasks']);
    }
    expect(reason?.length).toBeGreaterThan(10);
  }, 45_000);

  it('shows a decision and its reason in the tooltip over its mark', async () => {
    screenshotOnFailure('tooltip');
    const service = await page.locator('.series-chart[data-decisions]:not([data-decisions="0"])').first().getAttribute('data-service');
    const chart = page.locator(`.series-chart[data-service="${service}"]`);
    await chart.scrollIntoViewIfNeeded();
    const spot = await page.evaluate(async (s) => {
      const res = await fetch(`/api/v1/scaling/timeseries?service=${s}`);
      const body = (await res.json()) as { services: Array<{ decisions: Array<{ at: string }> }> };
      const first = body.services[0]?.decisions[0];
      const u = (globalThis as unknown as Charts).dashboardCharts.get(s ?? '');
      if (!first || !u) return null;
      const r = u.over.getBoundingClientRect();
      return { x: r.left + u.valToPos(Date.parse(first.at) / 1000, 'x'), y: r.top + 20 };
    }, service);

    expect(spot).not.toBeNull();
    await page.mouse.move(spot?.x ?? 0, spot?.y ?? 0);

    const tip = chart.locator('.chart-tooltip');
    await expect.poll(() => tip.isVisible(), { timeout: 5_000 }).toBe(true);
    expect(await tip.textContent()).toMatch(/decision .*\d+ → \d+ \((applied|failed)[^)]*\): \S+/);
  }, 30_000);

  it('backfills the last hour when opened: the charts start before the page did', async () => {
    screenshotOnFailure('backfill');
    const late = await browser?.newPage();
    if (!late) throw new Error('no browser');
    const opened = Date.now();

    await late.goto(`${local?.url}/`);
    await pointsAtLeast(late, 'backend-read', 2);
    const first = await late.evaluate(() => (globalThis as unknown as Charts).dashboardCharts.get('backend-read')?.data[0]?.[0] ?? Infinity);
    await late.close();

    expect(first * 1000).toBeLessThan(opened - 5_000);
  }, 30_000);

  it('has a favicon, the chart library served locally, and no console error', async () => {
    const icon = await page.locator('link[rel="icon"]').getAttribute('href');
    const [favicon, library] = await Promise.all([fetch(`${local?.url}${icon}`), fetch(`${local?.url}/dashboard/vendor/uPlot.iife.min.js`)]);

    expect(favicon.status).toBe(200);
    expect(favicon.headers.get('content-type')).toBe('image/svg+xml');
    expect(library.status).toBe(200);
    expect(problems).toEqual([]);
  });

  it('shows every shard node with its health and the shard statistics', async () => {
    screenshotOnFailure('shards');

    await page.waitForSelector('#shards tbody tr[data-node="shard_002/replica-1"]', { timeout: 15_000 });
    const nodes = await page.locator('#shards tbody tr').evaluateAll((rows) => rows.map((r) => `${r.getAttribute('data-node')}:${r.getAttribute('data-status')}`));
    const shards = await page.locator('#statistics tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-shard')));

    expect(nodes).toEqual(['shard_001/primary:healthy', 'shard_001/replica-1:healthy', 'shard_002/primary:healthy', 'shard_002/replica-1:healthy']);
    expect(shards).toEqual(['shard_001', 'shard_002']);
  }, 30_000);

  it('stops scaling from the stop button and shows the new status, then starts it again', async () => {
    screenshotOnFailure('stop-start');
    const badge = page.locator('#scaling-status');
    await expect.poll(() => badge.textContent(), { timeout: 10_000 }).toBe('scaling: running');

    await page.click('#stop-button');

    await expect.poll(() => badge.textContent(), { timeout: 10_000 }).toBe('scaling: stopped');
    expect((await getJson<{ enabled: boolean }>(`${local?.url}/api/v1/scaling/status`)).body.enabled).toBe(false);

    await page.click('#start-button');

    await expect.poll(() => badge.textContent(), { timeout: 10_000 }).toBe('scaling: running');
  }, 30_000);

  it('switches dry run through PATCH /config with the ETag it read', async () => {
    screenshotOnFailure('dry-run');
    const before = await getJson<{ version: number }>(`${local?.url}/api/v1/scaling/config`);

    await page.click('#dry-run-button');

    await expect.poll(() => page.locator('#dry-run-status').textContent(), { timeout: 10_000 }).toBe('dry run: on');
    const after = await getJson<{ version: number; config: { dry_run: boolean } }>(`${local?.url}/api/v1/scaling/config`);
    expect(after.body.config.dry_run).toBe(true);
    expect(after.body.version).toBe(before.body.version + 1);
  }, 30_000);
});
