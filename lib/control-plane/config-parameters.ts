import { createHash } from 'node:crypto';
import { Stack } from 'aws-cdk-lib';
import type * as iam from 'aws-cdk-lib/aws-iam';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** Characters assumed for each unresolved reference (Ref, GetAtt, ImportValue): ARNs, endpoints and names stay below it. */
export const TOKEN_SIZE_ESTIMATE = 128;

/** SSM Parameter Store limits: standard parameters hold 4 KB, advanced ones 8 KB. */
export const STANDARD_PARAMETER_MAX = 4096;
export const ADVANCED_PARAMETER_MAX = 8192;

/**
 * The size in bytes a CloudFormation value will have once deployed: literals count as they are,
 * joins add up their parts, and every other intrinsic (a reference to a resource or an export)
 * counts {@link TOKEN_SIZE_ESTIMATE}.
 */
export function estimatedSize(value: unknown): number {
  if (typeof value === 'string') return Buffer.byteLength(value, 'utf8');
  if (typeof value === 'number' || typeof value === 'boolean') return String(value).length;
  if (Array.isArray(value)) return value.reduce((sum: number, v) => sum + estimatedSize(v), 0);
  if (typeof value === 'object' && value !== null) {
    const join = (value as Record<string, unknown>)['Fn::Join'];
    if (Array.isArray(join) && typeof join[0] === 'string' && Array.isArray(join[1])) {
      const parts = join[1] as unknown[];
      return parts.reduce((sum: number, v) => sum + estimatedSize(v), 0) + join[0].length * Math.max(0, parts.length - 1);
    }
    return TOKEN_SIZE_ESTIMATE;
  }
  return 0;
}

/** The size Lambda counts for an environment: every key and value. */
export function estimatedEnvironmentSize(variables: Readonly<Record<string, unknown>>): number {
  return Object.entries(variables).reduce((sum, [k, v]) => sum + Buffer.byteLength(k, 'utf8') + estimatedSize(v), 0);
}

/** Props of {@link ConfigParameters}. */
export interface ConfigParametersProps {
  /** Environment-variable name -> value (tokens allowed). */
  readonly values: Readonly<Record<string, string>>;
}

/**
 * Configuration that grows with the deployment, kept in SSM Parameter Store instead of the
 * functions' environment (Lambda refuses more than 4 KB of it): one parameter per variable,
 * standard tier when the value fits in 4 KB, advanced (8 KB, charged monthly) when it does not,
 * and a synthesis error beyond. Parameter names are left to CloudFormation. The functions get
 * {@link environment} (`CONFIG_PARAMETERS`, variable -> parameter name) and read the values once
 * per cold start (`functions/handlers/shared/parameter-env.ts`).
 *
 * @example
 * ```ts
 * const params = new ConfigParameters(this, 'Config', { values: { SCALING_CONFIG_JSON: json } });
 * params.grantRead(fn.role);
 * new lambda.Function(this, 'Fn', { environment: params.environment(['SCALING_CONFIG_JSON']), ... });
 * ```
 */
export class ConfigParameters extends Construct {
  readonly parameters: Readonly<Record<string, ssm.StringParameter>>;
  private readonly values: Readonly<Record<string, string>>;

  constructor(scope: Construct, id: string, props: ConfigParametersProps) {
    super(scope, id);
    this.values = props.values;
    const stack = Stack.of(this);
    const sizes = Object.entries(props.values).map(([name, value]) => [name, estimatedSize(stack.resolve(value))] as const);
    validateProps(
      'ConfigParameters',
      sizes.map(([name, size]) => [size <= ADVANCED_PARAMETER_MAX, `${name} is about ${size} bytes, over the ${ADVANCED_PARAMETER_MAX}-byte limit of an SSM parameter`] as const),
    );
    this.parameters = Object.fromEntries(
      Object.entries(props.values).map(([name, value]) => {
        const size = sizes.find(([n]) => n === name)?.[1] ?? 0;
        return [
          name,
          new ssm.StringParameter(this, name, {
            description: `CA-DMS ${name} (read by the control-plane functions at cold start)`,
            stringValue: value,
            tier: size > STANDARD_PARAMETER_MAX ? ssm.ParameterTier.ADVANCED : ssm.ParameterTier.STANDARD,
          }),
        ];
      }),
    );
  }

  /**
   * The `CONFIG_PARAMETERS` variable naming the parameters of `names`, and
   * `CONFIG_PARAMETERS_VERSION`, a digest of their values: a deploy that changes a value changes
   * the environment too, so Lambda replaces the warm containers that read the old one.
   * `as` reads a parameter into another variable (parameter name -> variable name), e.g. the
   * monitor logins' secrets as the `SHARD_DB_SECRET_ARNS` the API connects to the shards with.
   */
  environment(names: readonly string[], as: Readonly<Record<string, string>> = {}): Record<string, string> {
    const missing = names.filter((n) => !this.parameters[n]);
    const variables = names.map((n) => as[n] ?? n);
    validateProps('ConfigParameters.environment', [
      [missing.length === 0, `no parameter for ${missing.join(', ')}`],
      [new Set(variables).size === variables.length, `two parameters read into one variable (${variables.join(', ')})`],
    ]);
    const stack = Stack.of(this);
    const digest = createHash('sha256');
    for (const n of names) digest.update(`${as[n] ?? n}\u0000${n}\u0000${JSON.stringify(stack.resolve(this.values[n]))}\u0000`);
    return {
      CONFIG_PARAMETERS: stack.toJsonString(Object.fromEntries(names.map((n) => [as[n] ?? n, this.parameters[n]?.parameterName]))),
      CONFIG_PARAMETERS_VERSION: digest.digest('hex').slice(0, 16),
    };
  }

  /** Lets `grantee` read the parameters of `names`. */
  grantRead(grantee: iam.IGrantable, names: readonly string[]): void {
    for (const n of names) this.parameters[n]?.grantRead(grantee);
  }
}
