/**
 * Configuration that grows with the deployment (shards, services, the alarm map) lives in SSM
 * Parameter Store, not in the function's environment: Lambda refuses an environment over 4 KB.
 * The CDK app sets `CONFIG_PARAMETERS`, a JSON object from environment-variable name to SSM
 * parameter name; each handler reads them once per cold start (top-level await, in the init
 * phase) and lays them into `process.env`, where the existing readers (`parseControllerEnv`,
 * `shardingConfigFromEnv`) validate them with zod exactly as before. A variable already set in
 * the environment wins, so an operator can still override one value in the console.
 *
 * @example
 * ```ts
 * await loadParameterEnv(process.env); // no-op without CONFIG_PARAMETERS (tests, local mode)
 * ```
 */
import { GetParametersCommand, SSMClient } from '@aws-sdk/client-ssm';
import { z } from 'zod';
import { EnvironmentError } from './env.js';
import { parseJsonText } from '../../core/json-text.js';

/** The variable naming the parameters to read. */
export const CONFIG_PARAMETERS_ENV = 'CONFIG_PARAMETERS';

/** GetParameters accepts at most this many names per call. */
const GET_PARAMETERS_MAX = 10;

const mappingSchema = z.record(
  z.string().regex(/^[A-Z][A-Z0-9_]*$/, 'an environment variable name'),
  z.string().regex(/^[a-zA-Z0-9_.\-/]{1,2048}$/, 'an SSM parameter name'),
);

function parseMapping(raw: string): Record<string, string> {
  let json: unknown;
  try {
    json = parseJsonText(raw);
  } catch (err) {
    throw new EnvironmentError([{ path: CONFIG_PARAMETERS_ENV, message: `not valid JSON: ${(err as Error).message}` }], { cause: err });
  }
  const parsed = mappingSchema.safeParse(json);
  if (!parsed.success) {
    throw new EnvironmentError(
      parsed.error.issues.map((i) => ({ path: [CONFIG_PARAMETERS_ENV, ...i.path.map(String)].join('.'), message: i.message })),
      { cause: parsed.error },
    );
  }
  return parsed.data;
}

/**
 * The values of the parameters `env.CONFIG_PARAMETERS` names, keyed by variable name; `{}` when
 * the variable is unset. Throws {@link EnvironmentError} naming each variable whose parameter
 * does not exist.
 */
export async function readParameterEnv(env: Readonly<Record<string, string | undefined>>, client: Pick<SSMClient, 'send'>): Promise<Record<string, string>> {
  const raw = env[CONFIG_PARAMETERS_ENV];
  if (raw === undefined || raw.trim() === '') return {};
  const mapping = parseMapping(raw);
  const byParameter = new Map<string, string[]>();
  for (const [variable, parameter] of Object.entries(mapping)) byParameter.set(parameter, [...(byParameter.get(parameter) ?? []), variable]);
  const names = [...byParameter.keys()];
  const values = new Map<string, string>();
  const missing: string[] = [];
  for (let i = 0; i < names.length; i += GET_PARAMETERS_MAX) {
    const out = await client.send(new GetParametersCommand({ Names: names.slice(i, i + GET_PARAMETERS_MAX) }));
    for (const p of out.Parameters ?? []) if (p.Name !== undefined && p.Value !== undefined) values.set(p.Name, p.Value);
    missing.push(...(out.InvalidParameters ?? []));
  }
  const issues = names
    .filter((name) => missing.includes(name) || !values.has(name))
    .flatMap((name) => (byParameter.get(name) ?? []).map((variable) => ({ path: `${CONFIG_PARAMETERS_ENV}.${variable}`, message: `SSM parameter "${name}" not found` })));
  if (issues.length > 0) throw new EnvironmentError(issues);
  return Object.fromEntries(Object.entries(mapping).map(([variable, parameter]) => [variable, values.get(parameter) ?? '']));
}

/**
 * Reads the parameters into `env` (the process environment by default), leaving variables that
 * are already set alone. A no-op without `CONFIG_PARAMETERS`, so tests and local mode never call SSM.
 */
export async function loadParameterEnv(env: Record<string, string | undefined> = process.env, client?: Pick<SSMClient, 'send'>): Promise<void> {
  if (env[CONFIG_PARAMETERS_ENV] === undefined) return;
  const values = await readParameterEnv(env, client ?? new SSMClient({ maxAttempts: 4, retryMode: 'standard' }));
  for (const [variable, value] of Object.entries(values)) env[variable] ??= value;
}
