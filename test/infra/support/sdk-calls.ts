/**
 * The AWS API calls a piece of runtime code can make, found by reading the source: from an entry
 * file, every module reachable through relative value imports (type-only imports and
 * `import type` left out: they vanish at compile time), and in each module every
 * `new XxxCommand(` whose `XxxCommand` is imported from an `@aws-sdk/client-*` package. Each
 * becomes the IAM action of the call (`GetSecretValueCommand` from client-secrets-manager is
 * `secretsmanager:GetSecretValue`).
 *
 * Calls made any other way (paginators, waiters, the aggregated client) are refused
 * ({@link UnscannableSdkCallError}), so the scan cannot miss them. It over-approximates on purpose: a module reachable from a handler may hold a call that
 * handler never makes (the IAM coverage test lists those, each with its reason), but a call
 * that exists cannot be missed.
 *
 * @example
 * ```ts
 * const calls = sdkCallsFrom('functions/handlers/evaluate.ts');
 * calls.get('ecs:UpdateService'); // ['functions/adapters/aws/ecs-target.ts']
 * ```
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { ROOT } from './paths.js';

/** The IAM service prefix of each AWS SDK v3 client package the code may use. */
export const IAM_PREFIX_OF_PACKAGE: Readonly<Record<string, string>> = {
  '@aws-sdk/client-application-auto-scaling': 'application-autoscaling',
  '@aws-sdk/client-cloudwatch': 'cloudwatch',
  '@aws-sdk/client-cloudwatch-logs': 'logs',
  '@aws-sdk/client-ecs': 'ecs',
  '@aws-sdk/client-rds': 'rds',
  '@aws-sdk/client-secrets-manager': 'secretsmanager',
  '@aws-sdk/client-sns': 'sns',
  '@aws-sdk/client-sqs': 'sqs',
  '@aws-sdk/client-ssm': 'ssm',
  '@aws-sdk/client-sts': 'sts',
};

/** Thrown when the code uses an SDK client package the table above does not know. */
export class UnknownSdkPackageError extends Error {
  override readonly name = 'UnknownSdkPackageError';
}

/**
 * Thrown when the code imports something from an SDK client package that could call AWS without
 * a `new XxxCommand(` the scan would see: a paginator (`paginateX`), a waiter (`waitUntilX`) or
 * the aggregated client (`new SecretsManager().getSecretValue()`).
 */
export class UnscannableSdkCallError extends Error {
  override readonly name = 'UnscannableSdkCallError';
}

/** Value imports from a client package the scan understands: commands, the bare client, errors. */
const SCANNABLE_IMPORT = /(Command|Client|Exception|Error)$/;

const IMPORT = /(?:^|\n)\s*(import|export)\s+(type\s+)?([^'";]*?)\s+from\s+['"]([^'"]+)['"]/g;
const SIDE_EFFECT_IMPORT = /(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g;

/** Resolves a relative import specifier (`./x.js`) to the TypeScript file it compiles from. */
function resolveModule(from: string, specifier: string): string | undefined {
  const base = resolve(dirname(from), specifier);
  const candidates = [base.replace(/\.js$/, '.ts'), base.replace(/\.mjs$/, '.mts'), base, `${base}.ts`, join(base, 'index.ts')];
  return candidates.find((c) => existsSync(c) && c.endsWith('ts'));
}

/** The names a value import brings in (`{ A, type B, C as D }` gives A and C; type-only ones are left out). */
function valueNames(clause: string): string[] {
  const braces = /\{([^}]*)\}/.exec(clause);
  if (!braces?.[1]) return [];
  return braces[1]
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '' && !part.startsWith('type '))
    .map((part) => part.split(/\s+as\s+/)[0]?.trim() ?? '');
}

/**
 * Every IAM action the code reachable from `entry` (a path relative to the repository root)
 * can call, with the modules (relative paths) that call it.
 */
export function sdkCallsFrom(entry: string): Map<string, string[]> {
  const calls = new Map<string, string[]>();
  const seen = new Set<string>();
  const queue = [resolve(ROOT, entry)];
  while (queue.length > 0) {
    const file = queue.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    const source = readFileSync(file, 'utf8');
    const commands = new Map<string, string>();
    for (const m of source.matchAll(IMPORT)) {
      const [, , typeOnly, clause = '', specifier = ''] = m;
      if (typeOnly !== undefined) continue;
      if (specifier.startsWith('.')) {
        const target = resolveModule(file, specifier);
        // Re-exports of types only (`export type { X } from`) were skipped above; a value import
        // whose names are all `type X` brings in nothing at run time.
        if (target && (clause.includes('*') || !clause.startsWith('{') || valueNames(clause).length > 0)) queue.push(target);
      } else if (specifier.startsWith('@aws-sdk/client-')) {
        const prefix = IAM_PREFIX_OF_PACKAGE[specifier];
        const opaque = valueNames(clause).filter((n) => !SCANNABLE_IMPORT.test(n));
        if (opaque.length > 0) {
          throw new UnscannableSdkCallError(`${relative(ROOT, file)} imports ${opaque.join(', ')} from ${specifier}: send XxxCommand objects through the bare client instead, so the IAM coverage test sees every call`);
        }
        for (const name of valueNames(clause).filter((n) => n.endsWith('Command'))) {
          if (prefix === undefined) throw new UnknownSdkPackageError(`${relative(ROOT, file)} imports ${name} from ${specifier}: add the package's IAM prefix to IAM_PREFIX_OF_PACKAGE`);
          commands.set(name, `${prefix}:${name.slice(0, -'Command'.length)}`);
        }
      }
    }
    for (const m of source.matchAll(SIDE_EFFECT_IMPORT)) {
      const target = m[1]?.startsWith('.') === true ? resolveModule(file, m[1]) : undefined;
      if (target) queue.push(target);
    }
    for (const [command, action] of commands) {
      if (new RegExp(`new\\s+${command}\\s*\\(`).test(source)) calls.set(action, [...(calls.get(action) ?? []), relative(ROOT, file)]);
    }
  }
  return calls;
}
