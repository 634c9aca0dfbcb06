import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freeLoopbackPort } from '../../../functions/adapters/net/free-port.js';

describe('freeLoopbackPort', () => {
  it('never gives one process the same port twice in a row of 1,000 (the kernel alone repeats dozens of times)', async () => {
    const ports: number[] = [];
    for (let i = 0; i < 1000; i += 1) ports.push(await freeLoopbackPort());
    const repeated = ports.filter((p, i) => ports.indexOf(p) !== i);
    expect(repeated).toEqual([]);
  });

  it('gives a port a server can bind on loopback at once', async () => {
    const port = await freeLoopbackPort();
    const srv = createServer();
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => resolve());
    });
    expect((srv.address() as { port: number }).port).toBe(port);
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  });
});
