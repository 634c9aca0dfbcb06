import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  NGINX_ENV_VARIABLES,
  NginxConfigError,
  NginxTemplateError,
  PRODUCTION_RUNTIME,
  SECURITY_HEADERS,
  fillTemplate,
  parseNginxEnv,
  renderNginxConfig,
  retryAfterSeconds,
} from '../../../containers/nginx/render.js';

const template = readFileSync(new URL('../../../containers/nginx/nginx.conf.template', import.meta.url), 'utf8');
const render = (env: Record<string, string> = {}) => renderNginxConfig(template, parseNginxEnv(env), PRODUCTION_RUNTIME);

function problemsOf(env: Record<string, string>): NginxConfigError {
  try {
    parseNginxEnv(env);
  } catch (error) {
    if (error instanceof NginxConfigError) return error;
    throw error;
  }
  throw new Error(`expected ${JSON.stringify(env)} to be rejected`);
}

/** The lines of one `upstream NAME { ... }` block. */
function upstreamBlock(conf: string, name: string): string[] {
  const start = conf.indexOf(`upstream ${name} {`);
  const end = conf.indexOf('}', start);
  return conf
    .slice(start, end)
    .split('\n')
    .map((l) => l.trim());
}

describe('parseNginxEnv defaults', () => {
  it('takes the guide\'s values and the local application when nothing is set', () => {
    const s = parseNginxEnv({});

    expect(s).toMatchObject({
      NGINX_WORKER_PROCESSES: 'auto',
      NGINX_WORKER_CONNECTIONS: 4096,
      NGINX_KEEPALIVE_TIMEOUT: 65,
      NGINX_LISTEN_PORT: 8080,
      NGINX_STATUS_PORT: 8081,
      NGINX_READ_UPSTREAMS: [{ host: '127.0.0.1', port: 8000 }],
      NGINX_WRITE_UPSTREAMS: [{ host: '127.0.0.1', port: 8000 }],
      NGINX_BACKUP_UPSTREAMS: [],
    });
  });

  it('treats blank values as unset', () => {
    expect(parseNginxEnv({ NGINX_WORKER_CONNECTIONS: '  ', NGINX_READ_UPSTREAMS: '' })).toMatchObject({
      NGINX_WORKER_CONNECTIONS: 4096,
      NGINX_READ_UPSTREAMS: [{ host: '127.0.0.1', port: 8000 }],
    });
  });

  it('ignores variables outside the NGINX_ prefix', () => {
    expect(() => parseNginxEnv({ PATH: '/usr/bin', NODE_ENV: 'production' })).not.toThrow();
  });
});

describe('parseNginxEnv rejections', () => {
  it.each([
    ['NGINX_WORKER_PROCESSES', 'many', 'must be "auto" or a whole number from 1 to 256'],
    ['NGINX_WORKER_PROCESSES', '0', 'must be "auto" or a whole number from 1 to 256'],
    ['NGINX_WORKER_CONNECTIONS', 'lots', 'must be a whole number'],
    ['NGINX_WORKER_CONNECTIONS', '16', 'must be at least 128'],
    ['NGINX_KEEPALIVE_TIMEOUT', '60', "must stay above the ALB's 60 s idle timeout"],
    ['NGINX_KEEPALIVE_TIMEOUT', '65s', 'must be a whole number'],
    ['NGINX_LISTEN_PORT', '70000', 'must be at most 65535'],
    // The image's nginx is unprivileged: it could not bind a port below 1024.
    ['NGINX_LISTEN_PORT', '80', 'must be at least 1024'],
    ['NGINX_READ_UPSTREAMS', 'app', '"app" is not host:port'],
    ['NGINX_READ_UPSTREAMS', '127.0.0.1:99999', 'has port outside 1-65535'],
    ['NGINX_WRITE_UPSTREAMS', 'app;evil:80', 'has an invalid host'],
    ['NGINX_BACKUP_UPSTREAMS', '10.0.0.5:8000,10.0.0.5:8000', 'lists "10.0.0.5:8000" twice'],
    ['NGINX_TRUSTED_PROXY_CIDRS', '10.0.0.0/33', '"10.0.0.0/33" is not a CIDR'],
    ['NGINX_TRUSTED_PROXY_CIDRS', 'everyone', '"everyone" is not a CIDR'],
    ['NGINX_RATE_LIMIT_API', '10/s', 'must be a request rate such as 10r/s'],
    ['NGINX_RATE_LIMIT_AUTH_BURST', '0', 'must be at least 1'],
    ['NGINX_API_CACHE_TTL', '-5', 'must be a whole number'],
    ['NGINX_AUTH_PATH', 'api/auth', 'must be a URL path starting with /'],
    ['NGINX_UPLOAD_PATH', '/upload;return 200', 'must be a URL path starting with /'],
    ['NGINX_STATIC_PATH', '/', 'must not be /'],
    ['NGINX_SESSION_COOKIES', 'session id', '"session id" is not one'],
  ])('rejects %s=%s', (variable, value, message) => {
    const error = problemsOf({ [variable]: value });

    expect(error.problems).toEqual([{ variable, message: expect.stringContaining(message), value }]);
    expect(error.message).toContain(`${variable}: `);
  });

  it('rejects a status port equal to the listen port', () => {
    const error = problemsOf({ NGINX_LISTEN_PORT: '8081' });

    expect(error.problems.map((p) => p.variable)).toEqual(['NGINX_STATUS_PORT']);
  });

  it('rejects an upstream keepalive timeout that is not below the application\'s', () => {
    const error = problemsOf({ NGINX_UPSTREAM_KEEPALIVE_TIMEOUT: '5', NGINX_APP_KEEPALIVE_TIMEOUT: '5' });

    expect(error.problems[0]).toMatchObject({
      variable: 'NGINX_UPSTREAM_KEEPALIVE_TIMEOUT',
      message: expect.stringContaining('must be below NGINX_APP_KEEPALIVE_TIMEOUT (5 s)'),
    });
  });

  it('rejects two endpoint types sharing one path', () => {
    const error = problemsOf({ NGINX_STATIC_PATH: '/api/' });

    expect(error.problems[0]).toMatchObject({ variable: 'NGINX_STATIC_PATH', message: 'must differ from NGINX_API_PATH' });
  });

  it('rejects an unknown NGINX_ variable and suggests the closest name', () => {
    const error = problemsOf({ NGINX_KEEPALIVE_TIMOUT: '75' });

    expect(error.problems[0]).toMatchObject({ variable: 'NGINX_KEEPALIVE_TIMOUT', message: expect.stringContaining('did you mean NGINX_KEEPALIVE_TIMEOUT?') });
  });

  it('reports every bad variable at once', () => {
    const error = problemsOf({ NGINX_WORKER_CONNECTIONS: 'x', NGINX_KEEPALIVE_TIMEOUT: '30', NGINX_READ_UPSTREAMS: 'nope' });

    expect(error.problems.map((p) => p.variable).sort()).toEqual(['NGINX_KEEPALIVE_TIMEOUT', 'NGINX_READ_UPSTREAMS', 'NGINX_WORKER_CONNECTIONS']);
  });
});

describe('renderNginxConfig', () => {
  it('fills every placeholder of the template', () => {
    expect(render()).not.toMatch(/\{\{|\}\}/);
  });

  it('writes the guide\'s worker and keepalive settings', () => {
    const conf = render({ NGINX_WORKER_PROCESSES: '8', NGINX_WORKER_CONNECTIONS: '2048', NGINX_KEEPALIVE_TIMEOUT: '75' });

    expect(conf).toContain('worker_processes 8;');
    expect(conf).toContain('worker_connections 2048;');
    expect(conf).toContain('worker_rlimit_nofile 4096;');
    expect(conf).toContain('keepalive_timeout 75s;');
  });

  it('gives every pool server its failure accounting and lists backups after the primaries', () => {
    const conf = render({
      NGINX_READ_UPSTREAMS: '10.0.1.10:8000,10.0.1.11:8000',
      NGINX_BACKUP_UPSTREAMS: '10.0.2.10:8000',
      NGINX_UPSTREAM_MAX_FAILS: '2',
      NGINX_UPSTREAM_FAIL_TIMEOUT: '15',
    });

    expect(upstreamBlock(conf, 'read_pool').filter((l) => l.startsWith('server '))).toEqual([
      'server 10.0.1.10:8000 max_fails=2 fail_timeout=15s;',
      'server 10.0.1.11:8000 max_fails=2 fail_timeout=15s;',
      'server 10.0.2.10:8000 max_fails=2 fail_timeout=15s backup;',
    ]);
  });

  it('leaves out a backup that is already a primary of the pool', () => {
    const conf = render({ NGINX_WRITE_UPSTREAMS: '10.0.2.10:8000', NGINX_BACKUP_UPSTREAMS: '10.0.2.10:8000' });

    expect(upstreamBlock(conf, 'write_pool').filter((l) => l.startsWith('server '))).toEqual(['server 10.0.2.10:8000 max_fails=3 fail_timeout=10s;']);
  });

  it('keeps upstream connections alive for less time than the application does', () => {
    const block = upstreamBlock(render({ NGINX_UPSTREAM_KEEPALIVE_TIMEOUT: '50', NGINX_APP_KEEPALIVE_TIMEOUT: '60' }), 'read_pool');

    expect(block).toContain('keepalive_timeout 50s;');
    expect(block).toContain('keepalive 32;');
  });

  it('retries only idempotent requests', () => {
    const conf = render();

    expect(conf).toMatch(/^\s*proxy_next_upstream error timeout http_502 http_503 http_504;$/m);
    expect(conf).not.toMatch(/^\s*proxy_next_upstream [^;]*non_idempotent/m);
  });

  it('trusts X-Forwarded-For only from the configured CIDRs', () => {
    const conf = render({ NGINX_TRUSTED_PROXY_CIDRS: '10.20.0.0/16,fd00::/8' });

    expect(conf.match(/set_real_ip_from [^;]+;/g)).toEqual(['set_real_ip_from 10.20.0.0/16;', 'set_real_ip_from fd00::/8;']);
  });

  it('binds stub_status to 127.0.0.1 on the status port', () => {
    expect(render({ NGINX_STATUS_PORT: '9145' })).toContain('listen 127.0.0.1:9145;');
  });

  it('sends every security header with "always" so errors carry them too', () => {
    const conf = render();

    for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
      expect(conf).toContain(`add_header ${name} "${value}" always;`);
    }
  });

  it('attributes a URI to the longest matching rate-limited path, as location matching does', () => {
    const conf = render({ NGINX_AUTH_PATH: '/api/', NGINX_API_PATH: '/api/v1/', NGINX_RATE_LIMIT_AUTH: '6r/m' });
    const start = conf.indexOf('map $uri $rate_zone {');
    const lines = conf.slice(start, conf.indexOf('}', start)).split('\n').map((l) => l.trim()).filter((l) => l.startsWith('"'));

    expect(lines).toEqual(['"~^/api/v1/documents/upload" uploads;', '"~^/api/v1/" api;', '"~^/api/" auth;']);
    expect(conf).toContain('"429:auth" 10;');
  });

  it('escapes dots in session cookie names for the cookie pattern', () => {
    expect(render({ NGINX_SESSION_COOKIES: 'ca_dms.sid,jwt' })).toContain('(?:ca_dms\\.sid|jwt)');
  });

  it('lists every configured read server exactly once', () => {
    const address = fc.tuple(fc.ipV4(), fc.integer({ min: 1, max: 65535 })).map(([ip, port]) => `${ip}:${port}`);
    fc.assert(
      fc.property(fc.uniqueArray(address, { minLength: 1, maxLength: 8 }), (servers) => {
        const lines = upstreamBlock(render({ NGINX_READ_UPSTREAMS: servers.join(',') }), 'read_pool').filter((l) => l.startsWith('server '));
        expect(lines.map((l) => l.split(' ')[1])).toEqual(servers);
      }),
      { numRuns: 50 },
    );
  });

  it('rejects runtime paths nginx would misparse, naming the field', () => {
    const settings = parseNginxEnv({});

    expect(() => renderNginxConfig(template, settings, { ...PRODUCTION_RUNTIME, accessLog: '/var/log/my log' })).toThrow(/runtime\.accessLog/);
  });
});

describe('retryAfterSeconds', () => {
  it.each([
    ['50r/s', 1],
    ['1r/s', 1],
    ['30r/m', 2],
    ['7r/m', 9],
    ['120r/m', 1],
  ])('waits %s -> %i s for one more request', (rate, seconds) => {
    expect(retryAfterSeconds(rate)).toBe(seconds);
  });
});

describe('fillTemplate', () => {
  it('replaces each placeholder with its value', () => {
    expect(fillTemplate('listen {{port}}; # {{port}}', { port: '80' })).toBe('listen 80; # 80');
  });

  it('refuses a placeholder without a value', () => {
    expect(() => fillTemplate('listen {{port}};', {})).toThrow(NginxTemplateError);
  });

  it('refuses a value without a placeholder', () => {
    expect(() => fillTemplate('listen 80;', { port: '80' })).toThrow(/no placeholder for \[port\]/);
  });
});

describe('docs/nginx.md', () => {
  it('documents every variable the sidecar reads', () => {
    const docs = readFileSync(new URL('../../../docs/nginx.md', import.meta.url), 'utf8');
    const documented = (name: string) => docs.includes(`\`${name}\``) || docs.includes(`\`${name.replace(/_BURST$/, '')}\` / \`_BURST\``);

    expect(NGINX_ENV_VARIABLES.filter((name) => !documented(name))).toEqual([]);
  });
});
