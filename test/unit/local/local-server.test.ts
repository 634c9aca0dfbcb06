/**
 * The local HTTP adapter against hostile and broken clients, over real sockets: every refusal
 * is a problem document with the right status, no request is held open for long, and a query
 * key named like a built-in property is data like any other.
 */
import { connect } from 'node:net';
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalServer, type LocalServer } from '../../../functions/adapters/http/local-server.js';

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
