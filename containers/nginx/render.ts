/**
 * Renders the nginx sidecar's configuration from `NGINX_*` environment variables and the one
 * template beside this file (`nginx.conf.template`).
 *
 * Validation comes first: an invalid value throws {@link NginxConfigError} naming every bad
 * variable, so the container stops at once instead of starting a broken nginx. Rendering is a
 * pure function of (template, settings, runtime paths); the container entry point
 * (`cli.ts`) and the tests call the very same functions.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const template = readFileSync('containers/nginx/nginx.conf.template', 'utf8');
 * const settings = parseNginxEnv({ NGINX_READ_UPSTREAMS: '10.0.1.5:8000,10.0.1.6:8000' });
 * const conf = renderNginxConfig(template, settings, PRODUCTION_RUNTIME);
 * ```
 */
import { z } from 'zod';

/** The ALB's idle timeout; nginx's client keepalive must outlast it. */
export const ALB_IDLE_TIMEOUT_SECONDS = 60;

/** Headers added to every response of the public server (errors included). */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'strict-origin-when-cross-origin',
  'Strict-Transport-Security': 'max-age=31536000; includeSubDomains',
  'Content-Security-Policy': "frame-ancestors 'none'",
  'Permissions-Policy': 'camera=(), microphone=(), geolocation=()',
};

/** One problem with one environment variable. */
export interface NginxEnvProblem {
  readonly variable: string;
  readonly message: string;
  /** The raw value as given, if any. */
  readonly value: string | undefined;
}

/** Thrown when the environment does not describe a valid configuration. */
export class NginxConfigError extends Error {
  override readonly name = 'NginxConfigError';
  constructor(
    readonly problems: readonly NginxEnvProblem[],
    options?: { cause?: unknown },
  ) {
    super(
      `invalid nginx configuration:\n${problems
        .map((p) => `  ${p.variable}: ${p.message}${p.value === undefined ? '' : ` (got ${JSON.stringify(p.value)})`}`)
        .join('\n')}`,
      options,
    );
  }
}

/** Thrown when the template and the values given to it do not match (a programming error). */
export class NginxTemplateError extends Error {
  override readonly name = 'NginxTemplateError';
}

const blankToUndefined = (v: unknown): unknown => {
  if (typeof v !== 'string') return v;
  const t = v.trim();
  return t === '' ? undefined : t;
};

function wholeNumber(min: number, max: number, fallback: number, why = '') {
  return z.preprocess(
    blankToUndefined,
    z
      .string()
      .regex(/^\d+$/, 'must be a whole number')
      .transform(Number)
      .pipe(z.number().min(min, `must be at least ${min}${why}`).max(max, `must be at most ${max}`))
      .default(fallback),
  );
}

const rate = (fallback: string) =>
  z.preprocess(
    blankToUndefined,
    z
      .string()
      .regex(/^[1-9]\d*r\/[sm]$/, 'must be a request rate such as 10r/s or 30r/m')
      .default(fallback),
  );

const urlPath = (fallback: string) =>
  z.preprocess(
    blankToUndefined,
    z
      .string()
      .regex(/^\/[A-Za-z0-9._~/-]*$/, 'must be a URL path starting with / (letters, digits, . _ ~ - / only)')
      .refine((p) => p !== '/', 'must not be / (the catch-all location)')
      .default(fallback),
  );

/** An upstream server address: `host:port`, host an IPv4 address, `[IPv6]` or a DNS name. */
export interface UpstreamAddress {
  readonly host: string;
  readonly port: number;
}

const hostSchema = z.union([z.ipv4(), z.hostname()]);

function parseAddress(entry: string): UpstreamAddress | string {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(entry);
  if (!m) return `"${entry}" is not host:port`;
  const [, host = '', portText = ''] = m;
  const port = Number(portText);
  if (port < 1 || port > 65535) return `"${entry}" has port outside 1-65535`;
  const ok = host.startsWith('[') ? z.ipv6().safeParse(host.slice(1, -1)).success : hostSchema.safeParse(host).success;
  if (!ok) return `"${entry}" has an invalid host`;
  return { host, port };
}

/** The non-empty, trimmed entries of a comma-separated variable. */
function commaList(text: string): string[] {
  return text
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
}

const addressList = (fallback: string, allowEmpty: boolean) =>
  z.preprocess(
    (v) => blankToUndefined(v) ?? fallback,
    z.string().transform((text, ctx) => {
      const entries = commaList(text);
      if (entries.length === 0 && !allowEmpty) {
        ctx.addIssue({ code: 'custom', message: 'must list at least one host:port' });
        return z.NEVER;
      }
      const out: UpstreamAddress[] = [];
      for (const entry of entries) {
        const parsed = parseAddress(entry);
        if (typeof parsed === 'string') {
          ctx.addIssue({ code: 'custom', message: `${parsed}; expected a comma-separated list of host:port` });
          return z.NEVER;
        }
        if (out.some((a) => a.host === parsed.host && a.port === parsed.port)) {
          ctx.addIssue({ code: 'custom', message: `lists "${entry}" twice` });
          return z.NEVER;
        }
        out.push(parsed);
      }
      return out;
    }),
  );

const cidrList = (fallback: string) =>
  z.preprocess(
    (v) => blankToUndefined(v) ?? fallback,
    z.string().transform((text, ctx) => {
      const entries = commaList(text);
      if (entries.length === 0) {
        ctx.addIssue({ code: 'custom', message: 'must list at least one CIDR' });
        return z.NEVER;
      }
      const cidr = z.union([z.cidrv4(), z.cidrv6()]);
      const bad = entries.find((e) => !cidr.safeParse(e).success);
      if (bad !== undefined) {
        ctx.addIssue({ code: 'custom', message: `"${bad}" is not a CIDR such as 10.0.0.0/16` });
        return z.NEVER;
      }
      return entries;
    }),
  );

const cookieNames = (fallback: string) =>
  z.preprocess(
    (v) => blankToUndefined(v) ?? fallback,
    z.string().transform((text, ctx) => {
      const names = commaList(text);
      const bad = names.find((n) => !/^[A-Za-z0-9_.-]+$/.test(n));
      if (names.length === 0 || bad !== undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `must be a comma-separated list of cookie names (letters, digits, _ . - only)${bad === undefined ? '' : `; "${bad}" is not one`}`,
        });
        return z.NEVER;
      }
      return names;
    }),
  );

const WORKERS_MESSAGE = 'must be "auto" or a whole number from 1 to 256';

/**
 * The sidecar's environment variables, their validation and their defaults. Keys are the
 * variable names, so every zod issue path names the variable at fault.
 */
export const nginxEnvSchema = z
  .object({
    NGINX_WORKER_PROCESSES: z.preprocess(
      blankToUndefined,
      z
        .union([
          z.literal('auto'),
          z
            .string()
            .regex(/^\d+$/)
            .transform(Number)
            .pipe(z.number().min(1, WORKERS_MESSAGE).max(256, WORKERS_MESSAGE)),
        ], { error: WORKERS_MESSAGE })
        .default('auto'),
    ),
    NGINX_WORKER_CONNECTIONS: wholeNumber(128, 65536, 4096),
    NGINX_KEEPALIVE_TIMEOUT: wholeNumber(
      ALB_IDLE_TIMEOUT_SECONDS + 1,
      3600,
      65,
      ` (seconds; it must stay above the ALB's ${ALB_IDLE_TIMEOUT_SECONDS} s idle timeout)`,
    ),
    // Above 1024: the image runs nginx's master unprivileged, and only root may bind below.
    NGINX_LISTEN_PORT: wholeNumber(1024, 65535, 8080),
    NGINX_STATUS_PORT: wholeNumber(1024, 65535, 8081),
    NGINX_READ_UPSTREAMS: addressList('127.0.0.1:8000', false),
    NGINX_WRITE_UPSTREAMS: addressList('127.0.0.1:8000', false),
    NGINX_BACKUP_UPSTREAMS: addressList('', true),
    NGINX_TRUSTED_PROXY_CIDRS: cidrList('10.0.0.0/8,172.16.0.0/12,192.168.0.0/16'),
    NGINX_UPSTREAM_MAX_FAILS: wholeNumber(1, 100, 3),
    NGINX_UPSTREAM_FAIL_TIMEOUT: wholeNumber(1, 3600, 10),
    NGINX_UPSTREAM_KEEPALIVE: wholeNumber(1, 10000, 32),
    NGINX_UPSTREAM_KEEPALIVE_TIMEOUT: wholeNumber(1, 3600, 4),
    NGINX_APP_KEEPALIVE_TIMEOUT: wholeNumber(1, 3600, 5),
    NGINX_PROXY_CONNECT_TIMEOUT: wholeNumber(1, 75, 2),
    NGINX_PROXY_SEND_TIMEOUT: wholeNumber(1, 3600, 55),
    NGINX_PROXY_READ_TIMEOUT: wholeNumber(1, 3600, 55),
    NGINX_PROXY_NEXT_UPSTREAM_TIMEOUT: wholeNumber(1, 3600, 10),
    NGINX_API_CACHE_TTL: wholeNumber(1, 86400, 30),
    NGINX_STATIC_CACHE_TTL: wholeNumber(1, 31536000, 604800),
    NGINX_API_CACHE_MAX_SIZE_MB: wholeNumber(1, 1048576, 256),
    NGINX_STATIC_CACHE_MAX_SIZE_MB: wholeNumber(1, 1048576, 1024),
    NGINX_RATE_LIMIT_AUTH: rate('30r/m'),
    NGINX_RATE_LIMIT_AUTH_BURST: wholeNumber(1, 100000, 20),
    NGINX_RATE_LIMIT_API: rate('50r/s'),
    NGINX_RATE_LIMIT_API_BURST: wholeNumber(1, 100000, 100),
    NGINX_RATE_LIMIT_UPLOADS: rate('60r/m'),
    NGINX_RATE_LIMIT_UPLOADS_BURST: wholeNumber(1, 100000, 20),
    NGINX_CLIENT_MAX_BODY_MB: wholeNumber(1, 10240, 10),
    NGINX_UPLOAD_MAX_BODY_MB: wholeNumber(1, 10240, 100),
    NGINX_AUTH_PATH: urlPath('/api/v1/auth/'),
    NGINX_UPLOAD_PATH: urlPath('/api/v1/documents/upload'),
    NGINX_API_PATH: urlPath('/api/'),
    NGINX_STATIC_PATH: urlPath('/static/'),
    NGINX_SESSION_COOKIES: cookieNames('session,sessionid,access_token,refresh_token'),
  })
  .superRefine((s, ctx) => {
    if (s.NGINX_STATUS_PORT === s.NGINX_LISTEN_PORT) {
      ctx.addIssue({ code: 'custom', path: ['NGINX_STATUS_PORT'], message: 'must differ from NGINX_LISTEN_PORT' });
    }
    if (s.NGINX_UPSTREAM_KEEPALIVE_TIMEOUT >= s.NGINX_APP_KEEPALIVE_TIMEOUT) {
      ctx.addIssue({
        code: 'custom',
        path: ['NGINX_UPSTREAM_KEEPALIVE_TIMEOUT'],
        message: `must be below NGINX_APP_KEEPALIVE_TIMEOUT (${s.NGINX_APP_KEEPALIVE_TIMEOUT} s), so nginx closes idle upstream connections before the application does`,
      });
    }
    const paths = ['NGINX_AUTH_PATH', 'NGINX_UPLOAD_PATH', 'NGINX_API_PATH', 'NGINX_STATIC_PATH'] as const;
    paths.forEach((name, i) => {
      const clash = paths.slice(0, i).find((other) => s[other] === s[name]);
      if (clash !== undefined) {
        ctx.addIssue({ code: 'custom', path: [name], message: `must differ from ${clash}` });
      }
    });
  });

/** Validated settings, one field per `NGINX_*` variable. */
export type NginxSettings = z.output<typeof nginxEnvSchema>;

/** Every variable the sidecar reads. */
export const NGINX_ENV_VARIABLES: readonly string[] = Object.keys(nginxEnvSchema.shape);

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const row = [i];
    for (let j = 1; j <= b.length; j += 1) {
      row.push(Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1)));
    }
    prev = row;
  }
  return prev[b.length] ?? 0;
}

function closest(name: string, candidates: readonly string[]): string | undefined {
  const ranked = candidates.map((c) => ({ c, d: editDistance(name, c) })).sort((x, y) => x.d - y.d);
  const best = ranked[0];
  return best !== undefined && best.d <= 3 ? best.c : undefined;
}

/**
 * Validates the `NGINX_*` variables of `env`. Unknown `NGINX_*` names are rejected too: a typo
 * must not silently leave a default in place.
 *
 * @throws {NginxConfigError} naming every variable at fault
 * @example
 * ```ts
 * const settings = parseNginxEnv(process.env);
 * settings.NGINX_KEEPALIVE_TIMEOUT; // 65 unless set
 * ```
 */
export function parseNginxEnv(env: Readonly<Record<string, string | undefined>>): NginxSettings {
  const known = new Set(NGINX_ENV_VARIABLES);
  const unknown = Object.keys(env)
    .filter((k) => k.startsWith('NGINX_') && !known.has(k))
    .sort()
    .map((variable) => {
      const near = closest(variable, NGINX_ENV_VARIABLES);
      const hint = near === undefined ? 'check the spelling' : `did you mean ${near}?`;
      return { variable, message: `is not a setting of the nginx sidecar (${hint})`, value: env[variable] };
    });
  const input = Object.fromEntries(NGINX_ENV_VARIABLES.map((k) => [k, env[k]]));
  const result = nginxEnvSchema.safeParse(input);
  const problems: NginxEnvProblem[] = [...unknown];
  if (!result.success) {
    for (const issue of result.error.issues) {
      const variable = String(issue.path[0] ?? 'environment');
      problems.push({ variable, message: issue.message, value: env[variable] });
    }
  }
  if (problems.length > 0 || !result.success) {
    throw new NginxConfigError(problems, result.success ? undefined : { cause: result.error });
  }
  return result.data;
}

const fsPath = z
  .string()
  .regex(/^[^\s;{}'"$]+$/, 'must be a path without spaces, quotes, braces, $ or ;');

/** Where the rendered nginx keeps its files; the tests point these at a temporary directory. */
export const nginxRuntimeSchema = z.object({
  pidFile: fsPath,
  /** Parent of the client body and proxy temporary directories. */
  tempDir: fsPath,
  /** Parent of the `api` and `static` cache directories. */
  cacheDir: fsPath,
  /** A file, or `/dev/stdout` for the container's log stream. */
  accessLog: fsPath,
  /** A file, or `stderr`. */
  errorLog: fsPath,
  /** Where `ngx_http_brotli_filter_module.so` lives. */
  modulesDir: fsPath,
  /** Worker user when the master runs as root; omitted leaves nginx's built-in default. */
  user: z
    .string()
    .regex(/^[a-z_][a-z0-9_-]*( [a-z_][a-z0-9_-]*)?$/, 'must be "user" or "user group"')
    .optional(),
  /** Address the public server binds; omitted binds every address (the container default). */
  listenAddress: z.union([z.ipv4(), z.literal('localhost')]).optional(),
});

/** Filesystem and bind parameters of a rendered configuration. */
export type NginxRuntime = z.input<typeof nginxRuntimeSchema>;

/**
 * The container's runtime: Debian's module directory, logs to the container's streams. No
 * `user`: the image starts nginx as an unprivileged user, and the directive only applies to a
 * master running as root.
 */
export const PRODUCTION_RUNTIME: NginxRuntime = {
  pidFile: '/run/nginx.pid',
  tempDir: '/var/lib/nginx',
  cacheDir: '/var/cache/nginx',
  accessLog: '/dev/stdout',
  errorLog: 'stderr',
  modulesDir: '/usr/lib/nginx/modules',
};

/**
 * Replaces every `{{name}}` of `template` with `values[name]`. A placeholder without a value,
 * or a value without a placeholder, is an error: the template and the renderer must agree.
 *
 * @example
 * ```ts
 * fillTemplate('listen {{port}};', { port: '80' }); // 'listen 80;'
 * ```
 */
export function fillTemplate(template: string, values: Readonly<Record<string, string>>): string {
  const used = new Set<string>();
  const missing = new Set<string>();
  const out = template.replace(/\{\{([a-z_]+)\}\}/g, (_match, name: string) => {
    const value = values[name];
    if (value === undefined) {
      missing.add(name);
      return '';
    }
    used.add(name);
    return value;
  });
  const unused = Object.keys(values).filter((k) => !used.has(k));
  if (missing.size > 0 || unused.length > 0) {
    throw new NginxTemplateError(
      `template and values disagree: no value for [${[...missing].join(', ')}], no placeholder for [${unused.join(', ')}]`,
    );
  }
  return out;
}

/** Seconds until a bucket filling at `rate` (`10r/s`, `30r/m`) admits one more request. */
export function retryAfterSeconds(rate: string): number {
  const m = /^(\d+)r\/([sm])$/.exec(rate);
  if (!m) throw new NginxTemplateError(`not a validated rate: ${rate}`);
  const perSecond = m[2] === 's' ? Number(m[1]) : Number(m[1]) / 60;
  return Math.max(1, Math.ceil(1 / perSecond));
}

const formatAddress = (a: UpstreamAddress): string => `${a.host}:${a.port}`;

function serverLines(primaries: readonly UpstreamAddress[], backups: readonly UpstreamAddress[], s: NginxSettings): string {
  const health = `max_fails=${s.NGINX_UPSTREAM_MAX_FAILS} fail_timeout=${s.NGINX_UPSTREAM_FAIL_TIMEOUT}s`;
  const primaryKeys = new Set(primaries.map(formatAddress));
  // A backup that is already a primary of this pool (for example the write primary backing
  // the read pool's replicas when both pools are the same servers) adds nothing.
  const extra = backups.filter((b) => !primaryKeys.has(formatAddress(b)));
  return [
    ...primaries.map((a) => `        server ${formatAddress(a)} ${health};`),
    ...extra.map((a) => `        server ${formatAddress(a)} ${health} backup;`),
  ].join('\n');
}

/**
 * Renders the configuration text.
 *
 * @throws {NginxConfigError} when `runtime` is invalid (its field names stand in for variables)
 * @example
 * ```ts
 * const conf = renderNginxConfig(template, parseNginxEnv(process.env), PRODUCTION_RUNTIME);
 * ```
 */
export function renderNginxConfig(template: string, settings: NginxSettings, runtime: NginxRuntime): string {
  const rt = nginxRuntimeSchema.safeParse(runtime);
  if (!rt.success) {
    throw new NginxConfigError(
      rt.error.issues.map((i) => ({ variable: `runtime.${String(i.path[0])}`, message: i.message, value: undefined })),
      { cause: rt.error },
    );
  }
  const r = rt.data;
  const s = settings;
  const listen = r.listenAddress === undefined ? String(s.NGINX_LISTEN_PORT) : `${r.listenAddress}:${s.NGINX_LISTEN_PORT}`;
  const securityHeaders = Object.entries(SECURITY_HEADERS)
    .map(([name, value]) => `        add_header ${name} "${value}" always;`)
    .join('\n');
  const zones = [
    { zone: 'auth', path: s.NGINX_AUTH_PATH, rate: s.NGINX_RATE_LIMIT_AUTH },
    { zone: 'uploads', path: s.NGINX_UPLOAD_PATH, rate: s.NGINX_RATE_LIMIT_UPLOADS },
    { zone: 'api', path: s.NGINX_API_PATH, rate: s.NGINX_RATE_LIMIT_API },
  ].sort((a, b) => b.path.length - a.path.length);
  const values: Record<string, string> = {
    rate_zone_map: zones.map((e) => `        "~^${e.path.replaceAll('.', '\\.')}" ${e.zone};`).join('\n'),
    retry_after_map: zones.map((e) => `        "429:${e.zone}" ${retryAfterSeconds(e.rate)};`).join('\n'),
    modules_dir: r.modulesDir,
    user_directive: r.user === undefined ? '' : `user ${r.user};`,
    worker_processes: String(s.NGINX_WORKER_PROCESSES),
    worker_connections: String(s.NGINX_WORKER_CONNECTIONS),
    worker_rlimit_nofile: String(s.NGINX_WORKER_CONNECTIONS * 2),
    pid_file: r.pidFile,
    error_log: r.errorLog,
    access_log: r.accessLog,
    temp_dir: r.tempDir,
    cache_dir: r.cacheDir,
    keepalive_timeout: String(s.NGINX_KEEPALIVE_TIMEOUT),
    client_max_body_mb: String(s.NGINX_CLIENT_MAX_BODY_MB),
    upload_max_body_mb: String(s.NGINX_UPLOAD_MAX_BODY_MB),
    set_real_ip_from: s.NGINX_TRUSTED_PROXY_CIDRS.map((c) => `    set_real_ip_from ${c};`).join('\n'),
    session_cookie_pattern: s.NGINX_SESSION_COOKIES.map((n) => n.replaceAll('.', '\\.')).join('|'),
    rate_limit_auth: s.NGINX_RATE_LIMIT_AUTH,
    rate_limit_api: s.NGINX_RATE_LIMIT_API,
    rate_limit_uploads: s.NGINX_RATE_LIMIT_UPLOADS,
    rate_limit_auth_burst: String(s.NGINX_RATE_LIMIT_AUTH_BURST),
    rate_limit_api_burst: String(s.NGINX_RATE_LIMIT_API_BURST),
    rate_limit_uploads_burst: String(s.NGINX_RATE_LIMIT_UPLOADS_BURST),
    api_cache_max_size_mb: String(s.NGINX_API_CACHE_MAX_SIZE_MB),
    static_cache_max_size_mb: String(s.NGINX_STATIC_CACHE_MAX_SIZE_MB),
    api_cache_ttl: String(s.NGINX_API_CACHE_TTL),
    static_cache_ttl: String(s.NGINX_STATIC_CACHE_TTL),
    read_servers: serverLines(s.NGINX_READ_UPSTREAMS, s.NGINX_BACKUP_UPSTREAMS, s),
    write_servers: serverLines(s.NGINX_WRITE_UPSTREAMS, s.NGINX_BACKUP_UPSTREAMS, s),
    upstream_keepalive: String(s.NGINX_UPSTREAM_KEEPALIVE),
    upstream_keepalive_timeout: String(s.NGINX_UPSTREAM_KEEPALIVE_TIMEOUT),
    proxy_connect_timeout: String(s.NGINX_PROXY_CONNECT_TIMEOUT),
    proxy_send_timeout: String(s.NGINX_PROXY_SEND_TIMEOUT),
    proxy_read_timeout: String(s.NGINX_PROXY_READ_TIMEOUT),
    proxy_next_upstream_timeout: String(s.NGINX_PROXY_NEXT_UPSTREAM_TIMEOUT),
    hide_security_headers: Object.keys(SECURITY_HEADERS)
      .map((name) => `    proxy_hide_header ${name};`)
      .join('\n'),
    security_headers: securityHeaders,
    listen,
    status_listen: `127.0.0.1:${s.NGINX_STATUS_PORT}`,
    auth_path: s.NGINX_AUTH_PATH,
    upload_path: s.NGINX_UPLOAD_PATH,
    api_path: s.NGINX_API_PATH,
    static_path: s.NGINX_STATIC_PATH,
  };
  return fillTemplate(template, values);
}
