/**
 * Reads the deployment configuration for one environment: `config/<env>.json`, then the
 * `ca-dms:config` object from the CDK context laid over it, then the guide's scaling
 * environment variables (`SCALING_CHECK_INTERVAL`, `MIN_INSTANCES`, ...) over `scaling`.
 *
 * @example
 * ```ts
 * const config = loadDeploymentConfig({
 *   configDir: 'config',
 *   context: (key) => app.node.tryGetContext(key),
 *   env: process.env,
 * });
 * ```
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { scalingEnvSchema } from '../../functions/core/scaling/config.js';
import { parseJsonText } from '../../functions/core/json-text.js';
import { DeploymentConfigError, mergeConfig, parseDeploymentConfig, type DeploymentConfig } from './deployment-config.js';

/** Context key naming the environment whose file is read (`-c ca-dms:environment=prod`). */
export const ENVIRONMENT_CONTEXT_KEY = 'ca-dms:environment';
/** Context key holding overrides (an object in cdk.json, or a JSON string with `-c`). */
export const CONFIG_CONTEXT_KEY = 'ca-dms:config';

/** Where the configuration comes from. */
export interface LoadConfigOptions {
  /** The directory holding `<env>.json` files. */
  readonly configDir: string;
  /** Reads a CDK context value (`app.node.tryGetContext`). */
  readonly context: (key: string) => unknown;
  /** Environment variables; only the guide's scaling variables are read. Default: none. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** Loads, merges and validates; throws {@link DeploymentConfigError} naming every problem. */
export function loadDeploymentConfig(options: LoadConfigOptions): DeploymentConfig {
  const envName = options.context(ENVIRONMENT_CONTEXT_KEY) ?? 'dev';
  if (typeof envName !== 'string' || !/^[a-z][a-z0-9]{0,9}$/.test(envName)) {
    throw new DeploymentConfigError([{ path: `context.${ENVIRONMENT_CONTEXT_KEY}`, message: `must be an environment name such as "dev", got ${JSON.stringify(envName)}` }]);
  }
  const file = join(options.configDir, `${envName}.json`);
  if (!existsSync(file)) {
    throw new DeploymentConfigError([{ path: file, message: `no configuration file for environment "${envName}"` }]);
  }
  let fromFile: unknown;
  try {
    fromFile = parseJsonText(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new DeploymentConfigError([{ path: file, message: `not valid JSON: ${(error as Error).message}` }], { cause: error });
  }

  let fromContext = options.context(CONFIG_CONTEXT_KEY);
  if (typeof fromContext === 'string') {
    try {
      fromContext = parseJsonText(fromContext);
    } catch (error) {
      throw new DeploymentConfigError([{ path: `context.${CONFIG_CONTEXT_KEY}`, message: `not valid JSON: ${(error as Error).message}` }], { cause: error });
    }
  }

  const merged = mergeConfig(mergeConfig({ environment: envName }, fromFile), fromContext ?? {});
  return parseDeploymentConfig(mergeConfig(merged, { scaling: scalingOverlay(options.env ?? {}) }));
}

/** The guide's variables as a partial scaling document (validated like everything else). */
function scalingOverlay(env: Readonly<Record<string, string | undefined>>): Record<string, unknown> {
  const parsed = scalingEnvSchema.safeParse(env);
  if (!parsed.success) {
    throw new DeploymentConfigError(
      parsed.error.issues.map((i) => ({ path: `env.${i.path.map(String).join('.')}`, message: i.message })),
      { cause: parsed.error },
    );
  }
  const e = parsed.data;
  const overlay: Record<string, unknown> = {};
  if (e.AUTO_SCALING_ENABLED !== undefined) overlay['enabled'] = e.AUTO_SCALING_ENABLED;
  if (e.SCALING_CHECK_INTERVAL !== undefined) overlay['check_interval'] = e.SCALING_CHECK_INTERVAL;
  if (e.MIN_INSTANCES !== undefined) overlay['min_instances'] = e.MIN_INSTANCES;
  if (e.MAX_INSTANCES !== undefined) overlay['max_instances'] = e.MAX_INSTANCES;
  return overlay;
}
