/**
 * What every operator CLI command shares: the command shape, flag parsing through
 * `node:util` `parseArgs` plus a zod schema, and the usage error that exits with code 2.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { databaseUrlProblem } from '../../functions/handlers/shared/shard-urls.js';

/** Where a command writes; injected so tests and the dispatcher share one path. */
export interface CliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly cwd: string;
}

/** One `ca-dms-scaling <command>`. */
export interface CliCommand {
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** The full usage text printed by `--help` and after a usage error. */
  readonly usage: string;
  /** Runs the command; resolves to the process exit code. */
  run(args: readonly string[], io: CliIo): Promise<number>;
}

/** Bad input from the operator: printed without a stack trace, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The exit code for bad input (flags, files), as the issue asks. */
export const EXIT_USAGE = 2;

/** The exit code for everything else that went wrong. */
export const EXIT_FAILURE = 1;

/** A failure whose message already says what went wrong and what to do (exit code 1). */
export class CliError extends Error {
  override readonly name = 'CliError';
}

/** The system errors an operator meets every day, in words that say what to do about them. */
const ERRNO_ADVICE: Readonly<Record<string, (e: NodeJS.ErrnoException & { address?: string; port?: number; hostname?: string }) => string>> = {
  ECONNREFUSED: (e) => `cannot connect to ${e.address ?? 'the server'}${e.port === undefined ? '' : `:${e.port}`} (connection refused): is it running, and is the URL right?`,
  ECONNRESET: () => 'the connection was reset by the other side: is the server healthy?',
  ETIMEDOUT: (e) => `connecting to ${e.address ?? 'the server'}${e.port === undefined ? '' : `:${e.port}`} timed out: is the host reachable?`,
  ENOTFOUND: (e) => `cannot resolve the host name ${e.hostname ?? ''}: check the URL`,
  ENOENT: (e) => `${e.path ?? 'a file'}: no such file or directory (check the path, and that its folder exists)`,
  EACCES: (e) => `${e.path ?? 'a file'}: permission denied`,
  EISDIR: (e) => `${e.path ?? 'the path'} is a directory, not a file`,
  ENOTDIR: (e) => `${e.path ?? 'the path'}: a part of it is not a directory`,
  ENOSPC: (e) => `${e.path ?? 'the disk'}: no space left on the device`,
  EROFS: (e) => `${e.path ?? 'the path'} is on a read-only file system`,
};

/** The first system error (errno code) in an error, its causes or an AggregateError's members. */
function findErrno(error: unknown, depth = 0): NodeJS.ErrnoException | undefined {
  if (!(error instanceof Error) || depth > 5) return undefined;
  const code = (error as NodeJS.ErrnoException).code;
  if (typeof code === 'string' && code in ERRNO_ADVICE) return error as NodeJS.ErrnoException;
  const nested = [...(error instanceof AggregateError ? (error.errors as unknown[]) : []), error.cause];
  for (const inner of nested) {
    const found = findErrno(inner, depth + 1);
    if (found) return found;
  }
  return undefined;
}

/**
 * One line an operator can act on, for any failure a command did not handle itself: a
 * {@link CliError}'s message, a system error in plain words, or the first line of the message.
 *
 * @example
 * ```ts
 * describeFailure(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED', address: '127.0.0.1', port: 5432 }));
 * // 'cannot connect to 127.0.0.1:5432 (connection refused): is it running, and is the URL right?'
 * ```
 */
export function describeFailure(error: unknown): string {
  if (error instanceof CliError) return error.message;
  const errno = findErrno(error);
  if (errno?.code !== undefined) return ERRNO_ADVICE[errno.code]?.(errno) ?? errno.message;
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0] || (error instanceof Error ? error.name : 'unexpected failure');
}

/**
 * `parseArgs` reads `--duration -1` as a flag without its value followed by an unknown flag
 * `-1`; a value that looks like a negative number is joined to its flag (`--duration=-1`) so
 * the flag's own check can say what is wrong with it.
 */
function joinNegativeValues(args: readonly string[], table: FlagTable): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const next = args[i + 1];
    const flag = arg.startsWith('--') ? table[arg.slice(2)] : undefined;
    if (flag?.type === 'string' && next !== undefined && /^-(?:\d|\.\d)/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}

/** The `parseArgs` option table of a command. */
export type FlagTable = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>;

/**
 * Parses `args` against a flag table, then validates the raw values with `schema` (whose keys
 * are the flag names). Every problem becomes one {@link UsageError} naming the flags.
 *
 * @example
 * ```ts
 * const flags = parseFlags(['--seed', '7'], { seed: { type: 'string' } }, z.object({ seed: numberFlag({ min: 0, int: true }) }));
 * flags.seed; // 7
 * ```
 */
export function parseFlags<S extends z.ZodType>(args: readonly string[], table: FlagTable, schema: S): z.infer<S> {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: joinNegativeValues(args, table), options: table, strict: true, allowPositionals: false }));
  } catch (error) {
    const accepted = Object.keys(table).map((k) => `--${k}`).join(', ');
    const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
    throw new UsageError(`${message} (accepted flags: ${accepted})`, { cause: error });
  }
  const parsed = schema.safeParse(values);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const flag = i.path.length > 0 ? `--${i.path.map(String).join('.')}` : 'flags';
      return `${flag}: ${i.message}`;
    });
    throw new UsageError(lines.join('\n'), { cause: parsed.error });
  }
  return parsed.data;
}

/**
 * A flag holding a number within [min, max] (whole when `int`); the message says what it
 * expected and what it got; {@link parseFlags} prefixes the flag, which the schema key names.
 *
 * @example
 * ```ts
 * z.object({ tick: numberFlag({ min: 1, int: true, unit: 'seconds' }) });
 * ```
 */
export function numberFlag(opts: { min: number; max?: number; int?: boolean; unit?: string }): z.ZodType<number, string> {
  const kind = opts.int === true ? 'a whole number' : 'a number';
  const range = opts.max === undefined ? `>= ${opts.min}` : `from ${opts.min} to ${opts.max}`;
  const expected = `${kind}${opts.unit ? ` of ${opts.unit}` : ''} ${range}`;
  return z.string().transform((raw, ctx) => {
    const value = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/.test(raw.trim()) ? Number(raw) : NaN;
    const ok = Number.isFinite(value) && value >= opts.min && (opts.max === undefined || value <= opts.max) && (opts.int !== true || Number.isInteger(value));
    if (!ok) {
      ctx.addIssue({ code: 'custom', message: `expected ${expected}, got "${raw}"` });
      return z.NEVER;
    }
    return value;
  });
}

/**
 * A flag restricted to a list of values; the message lists them.
 *
 * @example
 * ```ts
 * z.object({ format: choiceFlag(['table', 'json'] as const) });
 * ```
 */
export function choiceFlag<T extends string>(values: readonly [T, ...T[]]): z.ZodType<T, string> {
  return z.string().transform((raw, ctx) => {
    if ((values as readonly string[]).includes(raw)) return raw as T;
    ctx.addIssue({ code: 'custom', message: `expected one of ${values.join(', ')}, got "${raw}"` });
    return z.NEVER;
  });
}

/**
 * A database URL flag: postgresql:// (or postgres://), and `sslmode=verify-full` for any host but
 * loopback (TLS is always verified); the rule every shard URL is read by (shard-urls.ts), and
 * never repeated with its password.
 */
export const databaseUrl = z.string().transform((raw, ctx) => {
  const problem = databaseUrlProblem(raw);
  if (problem === undefined) return raw;
  ctx.addIssue({ code: 'custom', message: problem });
  return z.NEVER;
});
