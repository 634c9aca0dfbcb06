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

  beforeAll(async () => {
    profile = await mkdtemp(join(tmpdir(), 'ca-dms-chromium-'));
    shots = await mkdtemp(join(tmpdir(), 'ca-dms-dashboard-shots-'));
    [local, browser] = await Promise.all([
      startLocalProcess({ args: ['--seed-users', '20', '--acceleration', '600'], env: { SCALING_CHECK_INTERVAL: '1' } }),
      chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS }),
    ]);
    page = await browser.newPage();
    await page.goto(`${local.url}/`);
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

  it('draws a chart per service with demand, CPU and tasks from the API, and marks decisions with their reasons', async () => {
    screenshotOnFailure('charts');

    for (const service of SERVICES) {
      await page.waitForSelector(`svg.chart[data-service="${service}"]:not([data-points="0"]):not([data-points="1"])`, { timeout: 20_000 });
    }
    const running = await page.locator('svg.chart[data-service="backend-read"] polyline.running').getAttribute('points');
    const cpu = await page.locator('svg.chart[data-service="backend-read"] polyline.cpu').getAttribute('points');
    await page.waitForSelector('#decisions tbody tr[data-outcome]', { timeout: 20_000 });
    const reason = await page.locator('#decisions tbody tr[data-outcome] td').nth(4).textContent();

    expect(running?.split(' ').length).toBeGreaterThanOrEqual(2);
    expect(cpu?.split(' ').length).toBeGreaterThanOrEqual(2);
    expect(reason?.length).toBeGreaterThan(10);
  }, 45_000);

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
