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
import type { ExtraRoute } from './local-server.js';

const DIR = join(dirname(fileURLToPath(import.meta.url)), 'dashboard');

const FILES: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

const SECURITY_HEADERS = {
  // Everything the page loads comes from this server; scripts are files, never inline.
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

/** The dashboard's files on `GET`/`HEAD` of `/`, `/dashboard/app.js` and `/dashboard/style.css`. */
export function createDashboardRoute(): ExtraRoute {
  return async (req, res) => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
    const entry = FILES[path === '/index.html' ? '/' : path];
    if (!entry || (method !== 'GET' && method !== 'HEAD')) return false;
    const body = await readFile(join(DIR, entry.file));
    res.writeHead(200, { 'content-type': entry.type, 'content-length': String(body.length), ...SECURITY_HEADERS });
    res.end(method === 'HEAD' ? undefined : body);
    return true;
  };
}
