/**
 * Serves the live dashboard of local mode: static HTML, CSS and vanilla JavaScript from
 * `dashboard/` beside this file, no build step. The page is a client of the scaling API only (it
 * polls `/api/v1/scaling/...` and changes things through `POST /start`, `POST /stop` and
 * `PUT /config` with `If-Match`), so what it shows is what any API caller would see.
 *
 * @example
 * ```ts
 * await startLocalServer({ handler, port: 3000, extraRoutes: [createDashboardRoute()] });
 * // http://127.0.0.1:3000/ -> the dashboard
 * ```
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHART_FILES } from '../charts/assets.js';
import type { ExtraRoute } from './local-server.js';

const DIR = join(dirname(fileURLToPath(import.meta.url)), 'dashboard');
const JS = 'text/javascript; charset=utf-8';
const SVG = 'image/svg+xml';

/** Path -> file; the chart library comes from node_modules, served here (no CDN). */
const FILES: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: join(DIR, 'index.html'), type: 'text/html; charset=utf-8' },
  '/dashboard/app.js': { file: join(DIR, 'app.js'), type: JS },
  '/dashboard/style.css': { file: join(DIR, 'style.css'), type: 'text/css; charset=utf-8' },
  '/dashboard/favicon.svg': { file: join(DIR, 'favicon.svg'), type: SVG },
  // Browsers ask for /favicon.ico whatever the page says; the SVG answers it.
  '/favicon.ico': { file: join(DIR, 'favicon.svg'), type: SVG },
  '/dashboard/charts.js': { file: CHART_FILES['charts.js'], type: JS },
  '/dashboard/vendor/uPlot.iife.min.js': { file: CHART_FILES['uPlot.iife.min.js'], type: JS },
  '/dashboard/vendor/uPlot.min.css': { file: CHART_FILES['uPlot.min.css'], type: 'text/css; charset=utf-8' },
};

const SECURITY_HEADERS = {
  // Everything the page loads comes from this server; scripts are files, never inline.
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

/** The dashboard's files (page, script, styles, favicon, the chart library) on `GET`/`HEAD`. */
export function createDashboardRoute(): ExtraRoute {
  return async (req, res) => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
    const entry = FILES[path === '/index.html' ? '/' : path];
    if (!entry || (method !== 'GET' && method !== 'HEAD')) return false;
    const body = await readFile(entry.file);
    res.writeHead(200, { 'content-type': entry.type, 'content-length': String(body.length), ...SECURITY_HEADERS });
    res.end(method === 'HEAD' ? undefined : body);
    return true;
  };
}
