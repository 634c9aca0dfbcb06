/**
 * What every operator CLI command shares: the command shape, flag parsing through
 * `node:util` `parseArgs` plus a zod schema, and the usage error that exits with code 2.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';

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
    ({ values } = parseArgs({ args: [...args], options: table, strict: true, allowPositionals: false }));
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
