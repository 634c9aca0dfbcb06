/**
 * The tests' TCP proxy keeps its port while cut: another listener cannot take it, a client is
 * reset rather than connected to anything else, and restore forwards again on the same port.
 */
import { once } from 'node:events';
import { createConnection, createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';

/** Sends `text` through the proxy and answers what came back, or how the connection ended. */
function roundTrip(port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    let got = '';
    socket.on('data', (d) => {
      got += d.toString();
      if (got.length >= text.length) socket.end();
    });
    socket.on('connect', () => socket.write(text));
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(`error ${err.code ?? err.message}`));
    socket.on('close', () => resolve(got === '' ? 'closed' : got));
  });
}

describe("the tests' TCP proxy", () => {
  let echo: Server;
  let proxy: TcpProxy;
  beforeAll(async () => {
    echo = createServer((s) => s.pipe(s));
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    proxy = await startTcpProxy((echo.address() as AddressInfo).port);
  });
  afterAll(async () => {
    await proxy.close();
    echo.close();
  });

  it('forwards, keeps its port while cut, and forwards again on the same port', async () => {
    expect(await roundTrip(proxy.port, 'before')).toBe('before');

    await proxy.cut();
    const squatter = createServer();
    const taken = await new Promise<string>((resolve) => {
      squatter.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      squatter.listen(proxy.port, '127.0.0.1', () => resolve('listening'));
    });
    squatter.close();
    expect(taken).toBe('EADDRINUSE');
    expect(await roundTrip(proxy.port, 'while cut')).toMatch(/^(error ECONNRESET|closed)$/);

    await proxy.restore();
    expect(await roundTrip(proxy.port, 'after')).toBe('after');
  });
});
