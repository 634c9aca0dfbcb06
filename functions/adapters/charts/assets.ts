/**
 * The chart library and our chart helpers as files: uPlot (a small, maintained library made
 * for large time series) from node_modules, and the browser scripts beside this file. The
 * dashboard serves them; the simulator report inlines them so it stays one self-contained file.
 *
 * @example
 * ```ts
 * const html = renderReport(run, { assets: await readReportAssets(), tradeoff });
 * ```
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ReportAssets } from '../../core/scaling/simulator/report.js';

const require = createRequire(import.meta.url);
const DIR = dirname(fileURLToPath(import.meta.url));

/** Where each file is; the keys are also the names the dashboard serves them under. */
export const CHART_FILES = {
  'uPlot.iife.min.js': require.resolve('uplot/dist/uPlot.iife.min.js'),
  'uPlot.min.css': require.resolve('uplot/dist/uPlot.min.css'),
  'charts.js': join(DIR, 'charts.js'),
  'report.js': join(DIR, 'report.js'),
} as const;

/** The stylesheet and the scripts (in load order) the report inlines. */
export async function readReportAssets(): Promise<ReportAssets> {
  const [css, uplot, helpers, report] = await Promise.all([
    readFile(CHART_FILES['uPlot.min.css'], 'utf8'),
    readFile(CHART_FILES['uPlot.iife.min.js'], 'utf8'),
    readFile(CHART_FILES['charts.js'], 'utf8'),
    readFile(CHART_FILES['report.js'], 'utf8'),
  ]);
  return { css, scripts: [uplot, helpers, report] };
}
