/**
 * Reading trace files: plain or gzip-compressed CSV, and the NASA trace shipped in the
 * repository (the default of `start` and `simulate`).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readTraceFile, SHIPPED_TRACE, TraceFileError } from '../../../functions/adapters/sim/trace-file.js';

const CSV = 'timestamp,value\n2026-01-05T00:00:00Z,3\n2026-01-05T00:01:00Z,5\n';

describe('readTraceFile', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ca-dms-trace-'));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the shipped NASA trace: July and August 1995, one point a minute, named without .gz', async () => {
    const trace = await readTraceFile(SHIPPED_TRACE);

    expect(trace.name).toBe('nasa-http-1995-requests-per-minute.csv');
    expect(trace.points).toHaveLength(84_332);
    expect(trace.points[0]).toEqual({ at: Date.UTC(1995, 6, 1), value: 42 });
  });

  it('reads a gzip-compressed trace whatever its name, like the same trace uncompressed', async () => {
    await writeFile(join(dir, 'plain.csv'), CSV);
    await writeFile(join(dir, 'packed.data'), gzipSync(CSV));

    const packed = await readTraceFile(join(dir, 'packed.data'));

    expect(packed.points).toEqual((await readTraceFile(join(dir, 'plain.csv'))).points);
  });

  it('names the file when its gzip stream is damaged', async () => {
    await writeFile(join(dir, 'broken.csv.gz'), gzipSync(CSV).subarray(0, 20));

    const reading = readTraceFile(join(dir, 'broken.csv.gz'));

    await expect(reading).rejects.toBeInstanceOf(TraceFileError);
    await expect(reading).rejects.toThrow(`trace ${join(dir, 'broken.csv.gz')}: is not a readable gzip file`);
  });
});
