/**
 * Reading a workload trace file for the simulator and the benchmark: the I/O around the pure
 * parser in `functions/core/scaling/simulator/trace.ts`.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
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

/** A parsed trace and the name it is reported under (the file name). */
export interface TraceFile {
  readonly name: string;
  readonly points: TracePoint[];
}

/**
 * Reads and parses a `timestamp,value` CSV trace.
 *
 * @throws {TraceFileError} when the file is missing, unreadable, empty or has a bad row (the
 *   message carries the line number).
 * @example
 * ```ts
 * const { name, points } = await readTraceFile('../shared/traces/nasa-http-1995-requests-per-minute.csv');
 * ```
 */
export async function readTraceFile(path: string): Promise<TraceFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not a file' : `cannot be read (${code ?? String(error)})`;
    throw new TraceFileError(path, why, { cause: error });
  }
  if (text.trim() === '') throw new TraceFileError(path, 'the file is empty');
  try {
    return { name: basename(path), points: parseTraceCsv(text) };
  } catch (error) {
    if (error instanceof TraceError) throw new TraceFileError(path, error.message, { cause: error });
    throw error;
  }
}
