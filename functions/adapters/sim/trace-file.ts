/**
 * Reading a workload trace file for the simulator and the benchmark: the I/O around the pure
 * parser in `functions/core/scaling/simulator/trace.ts`.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import type { TracePoint } from '../../core/scaling/simulator/trace.js';
import { parseTraceCsv, TraceError } from '../../core/scaling/simulator/trace.js';

/** A trace file that cannot be read or parsed; the message names the file. */
export class TraceFileError extends Error {
  override readonly name = 'TraceFileError';
  constructor(
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`trace ${path}: ${message}`, options);
  }
}

/**
 * The trace shipped in the repository, the default of `start` and `simulate`: HTTP requests per
 * minute to the NASA Kennedy Space Center web server, July and August 1995 (public domain),
 * gzip-compressed (309 KB instead of 2.1 MB), so both commands work from a bare clone.
 */
export const SHIPPED_TRACE = fileURLToPath(new URL('../../../data/traces/nasa-http-1995-requests-per-minute.csv.gz', import.meta.url));

const gunzipAsync = promisify(gunzip);

/** A parsed trace and the name it is reported under (the file name, without `.gz`). */
export interface TraceFile {
  readonly name: string;
  readonly points: TracePoint[];
}

/**
 * Reads and parses a `timestamp,value` CSV trace, gzip-compressed or not (told by its first
 * bytes, not by its name).
 *
 * @throws {TraceFileError} when the file is missing, unreadable, empty or has a bad row (the
 *   message carries the line number).
 * @example
 * ```ts
 * const { name, points } = await readTraceFile(SHIPPED_TRACE); // name: nasa-http-1995-requests-per-minute.csv
 * ```
 */
export async function readTraceFile(path: string): Promise<TraceFile> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not a file' : `cannot be read (${code ?? String(error)})`;
    throw new TraceFileError(path, why, { cause: error });
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = await gunzipAsync(bytes);
    } catch (error) {
      throw new TraceFileError(path, `is not a readable gzip file (${(error as Error).message})`, { cause: error });
    }
  }
  const text = bytes.toString('utf8');
  if (text.trim() === '') throw new TraceFileError(path, 'the file is empty');
  try {
    return { name: basename(path).replace(/\.gz$/, ''), points: parseTraceCsv(text) };
  } catch (error) {
    if (error instanceof TraceError) throw new TraceFileError(path, error.message, { cause: error });
    throw error;
  }
}
