/**
 * The simulator's HTML report in a real browser (Debian's headless Chromium through
 * playwright-core), opened from disk as a user would open it: the charts are drawn by the
 * inlined chart library, labelled, zoomable and hoverable, with no console error.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { simulateCommand } from '../../bin/commands/simulate.js';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

describe('the simulation report in a browser', () => {
  let dir: string;
  let browser: Browser;
  let page: Page;
  const problems: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ca-dms-report-'));
    // A week of minutes (more ticks than the report has columns) with a daily cycle and a spike.
    const rows = Array.from({ length: 7 * 1440 }, (_, i) => `${new Date(Date.UTC(2026, 0, 5) + i * 60_000).toISOString()},${Math.round(300 + 200 * Math.sin((2 * Math.PI * i) / 1440) + (i === 5000 ? 2500 : 0))}`);
    await writeFile(join(dir, 'week.csv'), `timestamp,value\n${rows.join('\n')}\n`);
    await simulateCommand.run(['--trace', 'week.csv', '--policy', 'ca-dms,hpa', '--variant', 'hpa:targets.cpu=50', '--report', 'report.html'], { stdout: () => undefined, stderr: () => undefined, cwd: dir });
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('request', (r) => {
      if (!r.url().startsWith('file:')) problems.push(`fetched ${r.url()}`);
    });
    await page.goto(pathToFileURL(join(dir, 'report.html')).href);
    await page.waitForSelector('body[data-charts]');
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('draws a labelled time-series chart per row and the oracle, without fetching anything or logging an error', async () => {
    const charts = await page.evaluate(() => {
      const w = globalThis as unknown as { reportCharts: Array<{ axes: Array<{ label?: string }>; series: Array<{ label?: string }>; data: number[][] }> };
      return w.reportCharts.map((u) => ({ axes: u.axes.map((a) => a.label), series: u.series.slice(1).map((s) => s.label), points: u.data[0]?.length }));
    });
    const titles = await page.locator('.series-chart .u-title').allTextContents();

    expect(titles).toEqual(['ca-dms', 'hpa', 'hpa:targets.cpu=50', 'oracle']);
    for (const c of charts) {
      expect(c.axes).toEqual(['time (UTC)', 'task-units (demand) / tasks']);
      expect(c.series).toEqual(['demand (task-units)', 'running tasks', 'running + starting tasks', 'SLO-violation minutes']);
      expect(c.points).toBe(8000);
    }
    expect(await page.locator('.series-chart canvas').count()).toBe(4);
    expect(problems).toEqual([]);
  });

  it('shows the values under the cursor in a tooltip', async () => {
    const over = page.locator('.series-chart[data-policy="hpa"] .u-over');
    await over.scrollIntoViewIfNeeded();
    const box = await over.boundingBox();

    await page.mouse.move((box?.x ?? 0) + 200, (box?.y ?? 0) + 50);

    const tip = page.locator('.series-chart[data-policy="hpa"] .chart-tooltip');
    await expect.poll(() => tip.isVisible()).toBe(true);
    expect(await tip.textContent()).toMatch(/^2026-01-\d\d \d\d:\d\d UTC\ndemand \(task-units\): [\d.]+\nrunning tasks: \d+\nrunning \+ starting tasks: \d+\nSLO-violation minutes: \d+/);
  });

  it('zooms every chart to the time range dragged across one, and back on double-click', async () => {
    const ranges = () => page.evaluate(() => (globalThis as unknown as { reportCharts: Array<{ scales: { x: { min: number; max: number } } }> }).reportCharts.map((u) => [u.scales.x.min, u.scales.x.max]));
    const whole = await ranges();
    const over = page.locator('.series-chart[data-policy="ca-dms"] .u-over');
    await over.scrollIntoViewIfNeeded();
    const box = await over.boundingBox();
    const y = (box?.y ?? 0) + 60;

    await page.mouse.move((box?.x ?? 0) + 100, y);
    await page.mouse.down();
    await page.mouse.move((box?.x ?? 0) + 300, y, { steps: 5 });
    await page.mouse.up();
    const zoomed = await ranges();
    await page.mouse.dblclick((box?.x ?? 0) + 200, y);
    const back = await ranges();

    const span = ([min, max]: number[]) => (max ?? 0) - (min ?? 0);
    expect(span(zoomed[0] ?? [])).toBeLessThan(span(whole[0] ?? []) / 2);
    expect(new Set(zoomed.map((r) => r.join()))).toHaveLength(1);
    expect(back).toEqual(whole);
  });

  it('draws the trade-off chart with labelled axes, a curve per anchor sweep (hpa and target tracking on CPU and on connections), the oracle and ca-dms', async () => {
    const svg = page.locator('#tradeoff svg');

    expect(await svg.locator('.axis-label.x').textContent()).toMatch(/^task-minutes/);
    expect(await svg.locator('.axis-label.y').textContent()).toBe('SLO-violation minutes');
    expect(await svg.locator('g.curve').evaluateAll((gs) => gs.map((g) => g.getAttribute('data-name')))).toEqual(['hpa', 'target-tracking', 'step', 'threshold', 'hpa connections', 'target-tracking connections', 'ca-dms']);
    expect(await svg.locator('g.oracle').count()).toBe(1);
    expect(await svg.locator('g.point[data-name="ca-dms"]').count()).toBe(1);
    expect(await svg.locator('.tick.x').count()).toBeGreaterThan(2);
  });
});
