/**
 * The local HTTP adapter against hostile and broken clients, over real sockets: every refusal
 * is a problem document with the right status, no request is held open for long, and a query
 * key named like a built-in property is data like any other.
 */
import fc from 'fast-check';
import { request } from 'node:http';
import { connect } from 'node:net';
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindLocalServer, PortInUseError, startLocalServer, type LocalServer, type LocalServerOptions } from '../../../functions/adapters/http/local-server.js';
import { fromApiGatewayEvent } from '../../../functions/api/apigw.js';
import type { ApiRequest } from '../../../functions/api/http.js';

/** Sends raw bytes on one connection; resolves to everything received until the server closes it. */
function raw(port: number, ...parts: Array<string | Buffer>): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let got = '';
    socket.on('data', (c: Buffer) => (got += c.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve(got));
    socket.on('connect', () => {
      for (const p of parts) socket.write(p);
    });
    // A server that never closes fails the test by its timeout, not by hanging the suite.
    socket.setTimeout(20_000, () => socket.destroy(new Error(`no close within 20 s; received: ${got}`)));
  });
}

function problemOf(response: string): { status: number; contentType: string | undefined; body: { status: number; title: string; detail: string } } {
  const [head = '', body = ''] = response.split('\r\n\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
  const contentType = /\r\ncontent-type: ([^\r]+)/i.exec(head)?.[1];
  return { status, contentType, body: JSON.parse(body) as { status: number; title: string; detail: string } };
}

describe('local HTTP adapter', () => {
  let server: LocalServer;
  const seen: APIGatewayProxyEvent[] = [];

  beforeAll(async () => {
    server = await startLocalServer({
      port: 0,
      maxBodyBytes: 64,
      requestTimeoutMs: 600,
      handler: async (event) => {
        seen.push(event);
        return { statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query: event.queryStringParameters, multi: event.multiValueQueryStringParameters }) };
      },
    });
  });

  afterAll(async () => {
    await server.close();
  });

  it('passes query keys named like Object.prototype properties through as plain data', async () => {
    const res = await fetch(`${server.url}/x?constructor=1&__proto__=2&toString=3&hasOwnProperty=4&hasOwnProperty=5`);

    expect(res.status).toBe(200);
    const body = (await res.json()) as { query: Record<string, string>; multi: Record<string, string[]> };
    expect(body.query).toEqual({ constructor: '1', ['__proto__']: '2', toString: '3', hasOwnProperty: '5' });
    expect(body.multi.hasOwnProperty).toEqual(['4', '5']);
    expect(Object.getPrototypeOf(seen.at(-1)?.queryStringParameters)).toBeNull();
  });

  it('answers 400 with a problem document to a request target that is not a URL', async () => {
    const res = problemOf(await raw(server.port, 'GET //[ HTTP/1.1\r\nhost: x\r\n\r\n'));

    expect(res).toMatchObject({ status: 400, contentType: 'application/problem+json', body: { status: 400, detail: 'the request target is not a valid URL' } });
  });

  it('answers 400 to malformed percent-encoding in the path, before any route sees it', async () => {
    const res = await fetch(`${server.url}/api/v1/users/%zz/documents`);

    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(((await res.json()) as { detail: string }).detail).toContain('malformed percent-encoding');
  });

  it('answers 408 when the body stays shorter than its Content-Length', async () => {
    const res = problemOf(await raw(server.port, 'POST /x HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{"a":'));

    expect(res).toMatchObject({ status: 408, contentType: 'application/problem+json', body: { status: 408, title: 'Request Timeout' } });
  });

  it('answers 408 when the headers never end', async () => {
    const res = problemOf(await raw(server.port, 'GET /x HTTP/1.1\r\nhost: x\r\n'));

    expect(res).toMatchObject({ status: 408, body: { status: 408 } });
  });

  it('answers 413 and closes the connection, so the rest of a keep-alive stream is never read as a request', async () => {
    const big = 'x'.repeat(200);
    const got = await raw(server.port, `POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: ${big.length}\r\n\r\n${big}`, 'GET /after HTTP/1.1\r\nhost: x\r\n\r\n');

    expect(problemOf(got)).toMatchObject({ status: 413, contentType: 'application/problem+json' });
    expect(got).toMatch(/\r\nconnection: close\r\n/i);
    expect(got.match(/HTTP\/1\.1 /g)).toHaveLength(1);
  });

  it("gives Node's own parser refusals a problem document: 400 for bad syntax, 431 for oversized headers", async () => {
    const bad = problemOf(await raw(server.port, 'NOT HTTP AT ALL\r\n\r\n'));
    const huge = problemOf(await raw(server.port, `GET /x HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`));

    expect(bad).toMatchObject({ status: 400, contentType: 'application/problem+json', body: { status: 400 } });
    expect(huge).toMatchObject({ status: 431, contentType: 'application/problem+json', body: { status: 431 } });
  });
});

describe('local HTTP adapter, served directly (local mode) or through a Lambda handler', () => {
  let direct: LocalServer;
  let viaLambda: LocalServer;
  let lastDirect: ApiRequest | undefined;
  let lastEvent: APIGatewayProxyEvent | undefined;
  const ok = { status: 204, headers: {}, body: '' };

  beforeAll(async () => {
    direct = await startLocalServer({
      port: 0,
      dispatch: async (request) => {
        lastDirect = request;
        return ok;
      },
    });
    viaLambda = await startLocalServer({
      port: 0,
      handler: async (event) => {
        lastEvent = event;
        return { statusCode: 204, body: '' };
      },
    });
  });

  afterAll(async () => {
    await Promise.all([direct.close(), viaLambda.close()]);
  });

  /** Sends one request with node:http (repeated headers and all) and waits for its answer. */
  function send(port: number, method: string, target: string, headers: ReadonlyArray<readonly [string, string]>, body: string): Promise<number> {
    return new Promise((resolve, reject) => {
      // Raw header pairs (repeats kept) replace node's defaults, Host included.
      const framing = body.length > 0 ? [['content-type', 'application/json'], ['content-length', String(Buffer.byteLength(body))]] : [];
      const raw = [['host', `127.0.0.1:${port}`], ...framing, ...headers].flat();
      const req = request({ host: '127.0.0.1', port, method, path: target, headers: raw }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  const token = fc.stringMatching(/^[a-z][a-z0-9-]{0,11}$/);
  const text = fc.string({ maxLength: 20 }).filter((s) => !/[\r\n\0]/.test(s));
  const queryKey = fc.oneof(token, fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'a b', 'ü'));

  it('gives the routes the very request that API Gateway would build from the proxy event', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'),
        fc.array(fc.oneof(token, text.map(encodeURIComponent)), { maxLength: 4 }),
        fc.array(fc.tuple(queryKey, text)),
        fc.array(fc.tuple(token.map((t) => `x-${t}`), fc.stringMatching(/^[ -~]{0,20}$/).map((v) => v.trim()))),
        fc.oneof(fc.constant(''), fc.json()),
        async (method, segments, query, headers, body) => {
          const search = new URLSearchParams(query).toString();
          const target = `/${segments.join('/')}${search ? `?${search}` : ''}`;
          const sent = method === 'GET' || method === 'HEAD' ? '' : body;
          lastDirect = undefined;
          lastEvent = undefined;
          const status = await send(direct.port, method, target, headers, sent);
          // A target the adapter refuses (e.g. `//`) is refused the same way either way.
          expect(await send(viaLambda.port, method, target, headers, sent)).toBe(status);
          if (status !== 204) return;

          const expected = fromApiGatewayEvent(lastEvent as unknown as APIGatewayProxyEvent);
          // Each server has its own port (in Host) and each request its own id.
          const strip = (r: ApiRequest | undefined) => ({ ...r, requestId: undefined, headers: { ...r?.headers, host: undefined } });
          expect(strip(lastDirect)).toEqual(strip(expected));
        },
      ),
      { numRuns: 60 },
    );
  });

  it('refuses to start with neither or both of dispatch and handler', async () => {
    await expect(startLocalServer({ port: 0 } as unknown as LocalServerOptions)).rejects.toThrow('exactly one of dispatch and handler');
  });
});

describe('local HTTP adapter bound before its routes exist (local mode while it starts)', () => {
  it('owns the port from the bind: 503 "starting" with Retry-After until serve, then the routes; a second bind of it fails', async () => {
    const server = await bindLocalServer({ port: 0 });
    try {
      await expect(bindLocalServer({ port: server.port })).rejects.toBeInstanceOf(PortInUseError);

      const starting = await fetch(`${server.url}/api/v1/scaling/status`);
      expect(starting.status).toBe(503);
      expect(starting.headers.get('content-type')).toBe('application/problem+json');
      expect(starting.headers.get('retry-after')).toBe('2');
      expect(((await starting.json()) as { detail: string }).detail).toMatch(/starting/);
      // A body that was not read closes the connection, as after a 413.
      const posted = await raw(server.port, 'POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n');
      expect(problemOf(posted).status).toBe(503);

      server.serve({ dispatch: async () => ({ status: 200, headers: { 'content-type': 'text/plain' }, body: 'ready' }) });
      const ready = await fetch(`${server.url}/api/v1/scaling/status`);
      expect([ready.status, await ready.text()]).toEqual([200, 'ready']);
    } finally {
      await server.close();
    }
  });

  it('closes once however often it is asked', async () => {
    const server = await bindLocalServer({ port: 0 });
    await Promise.all([server.close(), server.close()]);
    await expect(fetch(server.url)).rejects.toThrow();
  });
});

describe('local HTTP adapter resending reusable answers as bytes', () => {
  let server: LocalServer;
  let changes = 0;
  const dispatched: string[] = [];
  /** Requests an extra route (the dashboard, the documents API) was asked to take. */
  const offeredToExtras: string[] = [];

  beforeAll(async () => {
    server = await startLocalServer({
      port: 0,
      changes: () => changes,
      extraRoutes: [
        (req) => {
          offeredToExtras.push(req.url ?? '');
          return false;
        },
      ],
      dispatch: async (request) => {
        const target = `${request.method} ${request.path}?${new URLSearchParams(request.query as Record<string, string>).toString()}`;
        dispatched.push(target);
        const reuseForMs = request.path === '/never' ? 0 : 60_000;
        return { status: 200, headers: { 'content-type': 'application/json', etag: '"e"' }, body: JSON.stringify({ target, n: dispatched.length }), reuseForMs };
      },
    });
  });

  afterAll(async () => {
    await server.close();
  });

  const get = async (target: string, headers: Record<string, string> = {}): Promise<{ body: string; id: string | null; etag: string | null }> => {
    const res = await fetch(`${server.url}${target}`, { headers });
    return { body: await res.text(), id: res.headers.get('x-request-id'), etag: res.headers.get('etag') };
  };

  it('answers the same GET again from the kept bytes (headers included, a request id of its own), each query string apart', async () => {
    dispatched.length = 0;
    const first = await get('/a?x=1');
    const again = await get('/a?x=1');
    const other = await get('/a?x=2');

    expect(dispatched).toEqual(['GET /a?x=1', 'GET /a?x=2']);
    expect(again.body).toBe(first.body);
    expect(again.etag).toBe('"e"');
    expect(again.id).not.toBe(first.id);
    expect(other.body).not.toBe(first.body);
  });

  it('resends kept bytes without offering the request to the extra routes again, with a Content-Length, as the first answer had', async () => {
    offeredToExtras.length = 0;
    const first = await fetch(`${server.url}/len?q=1`);
    const firstBody = await first.text();
    const again = await fetch(`${server.url}/len?q=1`);
    const againBody = await again.text();

    expect(offeredToExtras).toEqual(['/len?q=1']);
    expect(againBody).toBe(firstBody);
    for (const res of [first, again]) {
      expect(res.headers.get('content-length')).toBe(String(Buffer.byteLength(firstBody)));
      expect(res.headers.get('transfer-encoding')).toBeNull();
    }
  });

  it('never resends an answer not marked reusable, nor answers a conditional GET or a HEAD from kept bytes', async () => {
    dispatched.length = 0;
    await get('/never');
    await get('/never');
    await get('/b');
    await get('/b', { 'if-none-match': '"e"' });
    await fetch(`${server.url}/b`, { method: 'HEAD' });

    expect(dispatched).toEqual(['GET /never?', 'GET /never?', 'GET /b?', 'GET /b?', 'HEAD /b?']);
  });

  it('drops what it kept after a request of another method, and when the routes count a change', async () => {
    dispatched.length = 0;
    await get('/c');
    await fetch(`${server.url}/c`, { method: 'POST' });
    await get('/c');
    await get('/c');
    changes++;
    await get('/c');

    expect(dispatched).toEqual(['GET /c?', 'POST /c?', 'GET /c?', 'GET /c?']);
  });
});
