/**
 * The runtime scaling configuration: one zod schema, defaults from the CA-DMS scaling guide,
 * global settings plus per-service overrides. The guide's flat JSON document is a valid
 * configuration as it stands.
 *
 * @example
 * ```ts
 * const config = parseScalingConfig({ cpu_scale_up: 75, services: { worker: { policy: 'threshold' } } });
 * const worker = resolveServiceConfig(config, 'worker'); // global settings with worker's overrides
 * ```
 */
import { z } from 'zod';
import { DEFAULT_SERVICES } from './types.js';

export const POLICY_NAMES = ['ca-dms', 'threshold', 'target-tracking', 'step', 'hpa'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

const percent = z.number().min(0).max(100);
const nonNegative = z.number().min(0);
const seconds = z.number().int().min(0);

/** One step of a step-scaling policy, bounds relative to the alarm threshold (AWS semantics). */
const stepAdjustment = z.strictObject({
  lower: z.number().nullable().default(null),
  upper: z.number().nullable().default(null),
  adjustment: z.number(),
});

const stepSettings = z.strictObject({
  metric: z.enum(['cpu', 'memory', 'responseTimeMs', 'connectionsPerTask', 'queueDepthPerTask']).default('cpu'),
  adjustment_type: z.enum(['ChangeInCapacity', 'PercentChangeInCapacity', 'ExactCapacity']).default('ChangeInCapacity'),
  min_adjustment_magnitude: z.number().int().min(1).nullable().default(null),
  scale_out_threshold: z.number().default(70),
  scale_in_threshold: z.number().default(40),
  scale_out_steps: z.array(stepAdjustment).min(1).default([
    { lower: 0, upper: 15, adjustment: 1 },
    { lower: 15, upper: 25, adjustment: 2 },
    { lower: 25, upper: null, adjustment: 3 },
  ]),
  scale_in_steps: z.array(stepAdjustment).min(1).default([{ lower: null, upper: 0, adjustment: -1 }]),
});

const hpaPolicy = z.strictObject({
  type: z.enum(['Pods', 'Percent']),
  value: z.number().int().min(1),
  periodSeconds: z.number().int().min(1).max(1800),
});
const hpaRules = z.strictObject({
  stabilizationWindowSeconds: z.number().int().min(0).max(3600).optional(),
  selectPolicy: z.enum(['Max', 'Min', 'Disabled']).optional(),
  policies: z.array(hpaPolicy).optional(),
});
const hpaSettings = z.strictObject({
  tolerance: z.number().min(0).max(1).default(0.1),
  behavior: z.strictObject({ scaleUp: hpaRules.optional(), scaleDown: hpaRules.optional() }).default({}),
});

/** Targets for the proportional policies; `null` means the metric is not targeted. */
const targets = z.strictObject({
  cpu: percent.nullable().default(70),
  memory: percent.nullable().default(null),
  response_time: nonNegative.nullable().default(null),
  connections: nonNegative.nullable().default(null),
  queue_depth: nonNegative.nullable().default(null),
});

/** Settings that may be set globally and overridden per service. */
const serviceSettingsShape = {
  enabled: z.boolean(),
  policy: z.enum(POLICY_NAMES),
  min_instances: z.number().int().min(0),
  max_instances: z.number().int().min(1),
  scale_cooldown: seconds,
  scale_out_cooldown: seconds.nullable(),
  scale_in_cooldown: seconds.nullable(),
  scale_step: z.number().int().min(1),
  stabilization_window: seconds,
  cpu_scale_up: percent,
  cpu_scale_down: percent,
  memory_scale_up: percent,
  memory_scale_down: percent,
  response_time_scale_up: nonNegative,
  connections_scale_up: nonNegative,
  connections_scale_down: nonNegative,
  error_rate_scale_up: percent,
  queue_depth_scale_up: nonNegative,
  queue_depth_scale_down: nonNegative,
  targets,
  step: stepSettings,
  hpa: hpaSettings,
} as const;

const serviceDefaults = {
  enabled: true,
  policy: 'ca-dms' as PolicyName,
  min_instances: 2,
  max_instances: 10,
  scale_cooldown: 300,
  scale_out_cooldown: null,
  scale_in_cooldown: null,
  scale_step: 1,
  stabilization_window: 300,
  cpu_scale_up: 80,
  cpu_scale_down: 30,
  memory_scale_up: 85,
  memory_scale_down: 40,
  response_time_scale_up: 1000,
  connections_scale_up: 80,
  connections_scale_down: 20,
  error_rate_scale_up: 5,
  queue_depth_scale_up: 100,
  queue_depth_scale_down: 10,
};

/** Per-service overrides: any subset of the service settings. */
export const serviceOverrideSchema = z.strictObject({
  enabled: serviceSettingsShape.enabled.optional(),
  policy: serviceSettingsShape.policy.optional(),
  min_instances: serviceSettingsShape.min_instances.optional(),
  max_instances: serviceSettingsShape.max_instances.optional(),
  scale_cooldown: serviceSettingsShape.scale_cooldown.optional(),
  scale_out_cooldown: serviceSettingsShape.scale_out_cooldown.optional(),
  scale_in_cooldown: serviceSettingsShape.scale_in_cooldown.optional(),
  scale_step: serviceSettingsShape.scale_step.optional(),
  stabilization_window: serviceSettingsShape.stabilization_window.optional(),
  cpu_scale_up: serviceSettingsShape.cpu_scale_up.optional(),
  cpu_scale_down: serviceSettingsShape.cpu_scale_down.optional(),
  memory_scale_up: serviceSettingsShape.memory_scale_up.optional(),
  memory_scale_down: serviceSettingsShape.memory_scale_down.optional(),
  response_time_scale_up: serviceSettingsShape.response_time_scale_up.optional(),
  connections_scale_up: serviceSettingsShape.connections_scale_up.optional(),
  connections_scale_down: serviceSettingsShape.connections_scale_down.optional(),
  error_rate_scale_up: serviceSettingsShape.error_rate_scale_up.optional(),
  queue_depth_scale_up: serviceSettingsShape.queue_depth_scale_up.optional(),
  queue_depth_scale_down: serviceSettingsShape.queue_depth_scale_down.optional(),
  targets: targets.partial().optional(),
  step: stepSettings.partial().optional(),
  hpa: hpaSettings.partial().optional(),
});
export type ServiceOverride = z.infer<typeof serviceOverrideSchema>;

const scalingConfigObject = z.strictObject({
  enabled: serviceSettingsShape.enabled.default(serviceDefaults.enabled),
  dry_run: z.boolean().default(false),
  /** Seconds between scheduled evaluations (SCALING_CHECK_INTERVAL). */
  check_interval: z.number().int().min(1).max(86_400).default(30),
  policy: serviceSettingsShape.policy.default(serviceDefaults.policy),
  min_instances: serviceSettingsShape.min_instances.default(serviceDefaults.min_instances),
  max_instances: serviceSettingsShape.max_instances.default(serviceDefaults.max_instances),
  scale_cooldown: serviceSettingsShape.scale_cooldown.default(serviceDefaults.scale_cooldown),
  scale_out_cooldown: serviceSettingsShape.scale_out_cooldown.default(serviceDefaults.scale_out_cooldown),
  scale_in_cooldown: serviceSettingsShape.scale_in_cooldown.default(serviceDefaults.scale_in_cooldown),
  scale_step: serviceSettingsShape.scale_step.default(serviceDefaults.scale_step),
  stabilization_window: serviceSettingsShape.stabilization_window.default(serviceDefaults.stabilization_window),
  cpu_scale_up: serviceSettingsShape.cpu_scale_up.default(serviceDefaults.cpu_scale_up),
  cpu_scale_down: serviceSettingsShape.cpu_scale_down.default(serviceDefaults.cpu_scale_down),
  memory_scale_up: serviceSettingsShape.memory_scale_up.default(serviceDefaults.memory_scale_up),
  memory_scale_down: serviceSettingsShape.memory_scale_down.default(serviceDefaults.memory_scale_down),
  response_time_scale_up: serviceSettingsShape.response_time_scale_up.default(serviceDefaults.response_time_scale_up),
  connections_scale_up: serviceSettingsShape.connections_scale_up.default(serviceDefaults.connections_scale_up),
  connections_scale_down: serviceSettingsShape.connections_scale_down.default(serviceDefaults.connections_scale_down),
  error_rate_scale_up: serviceSettingsShape.error_rate_scale_up.default(serviceDefaults.error_rate_scale_up),
  queue_depth_scale_up: serviceSettingsShape.queue_depth_scale_up.default(serviceDefaults.queue_depth_scale_up),
  queue_depth_scale_down: serviceSettingsShape.queue_depth_scale_down.default(serviceDefaults.queue_depth_scale_down),
  targets: targets.default(targets.parse({})),
  step: stepSettings.default(stepSettings.parse({})),
  hpa: hpaSettings.default(hpaSettings.parse({})),
  services: z
    .record(z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, 'service names are lower-case letters, digits and dashes'), serviceOverrideSchema)
    .default(Object.fromEntries(DEFAULT_SERVICES.map((s) => [s, {}]))),
});

/** The global configuration after defaults were applied. */
export type ScalingConfig = z.infer<typeof scalingConfigObject>;

/** One service's effective configuration: the global settings merged with its overrides. */
export type ServiceScalingConfig = Omit<ScalingConfig, 'services' | 'check_interval' | 'dry_run'> & {
  readonly service: string;
  readonly dry_run: boolean;
  /** The scale-out and scale-in cooldowns in force (seconds), with fallbacks resolved. */
  readonly cooldown_out: number;
  readonly cooldown_in: number;
};

const PAIRS = [
  ['cpu_scale_down', 'cpu_scale_up'],
  ['memory_scale_down', 'memory_scale_up'],
  ['connections_scale_down', 'connections_scale_up'],
  ['queue_depth_scale_down', 'queue_depth_scale_up'],
] as const;

function mergeService(config: ScalingConfig, service: string): ServiceScalingConfig {
  const o: ServiceOverride = config.services[service] ?? {};
  const { services: _services, check_interval: _interval, ...global } = config;
  const merged = {
    ...global,
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
    targets: { ...global.targets, ...(o.targets ?? {}) },
    step: { ...global.step, ...(o.step ?? {}) },
    hpa: { ...global.hpa, ...(o.hpa ?? {}), behavior: { ...global.hpa.behavior, ...(o.hpa?.behavior ?? {}) } },
  } as Omit<ServiceScalingConfig, 'service' | 'cooldown_out' | 'cooldown_in'>;
  return {
    ...merged,
    service,
    cooldown_out: merged.scale_out_cooldown ?? merged.scale_cooldown,
    cooldown_in: merged.scale_in_cooldown ?? merged.scale_cooldown,
  };
}

/** The schema, with the cross-field rules checked for the global settings and every service. */
export const scalingConfigSchema = scalingConfigObject.superRefine((config, ctx) => {
  const scopes: Array<{ prefix: (string | number)[]; cfg: ServiceScalingConfig; own: Record<string, unknown> }> = [
    { prefix: [], cfg: mergeService({ ...config, services: {} }, '*'), own: config },
    ...Object.keys(config.services).map((s) => ({
      prefix: ['services', s],
      cfg: mergeService(config, s),
      own: config.services[s] as Record<string, unknown>,
    })),
  ];
  for (const { prefix, cfg, own } of scopes) {
    // A service scope reports a cross-field problem only when its override sets one of the
    // fields involved, at the field it set; otherwise the global scope already names it.
    const pathFor = (a: string, b: string): (string | number)[] | null => {
      if (prefix.length === 0) return [a];
      if (a in own) return [...prefix, a];
      if (b in own) return [...prefix, b];
      return null;
    };
    const report = (a: string, b: string, message: string): void => {
      const path = pathFor(a, b);
      if (path) ctx.addIssue({ code: 'custom', path, message });
    };
    if (cfg.min_instances > cfg.max_instances) {
      report('min_instances', 'max_instances', `min_instances (${cfg.min_instances}) must not exceed max_instances (${cfg.max_instances})`);
    }
    for (const [down, up] of PAIRS) {
      if (cfg[down] >= cfg[up]) report(down, up, `${down} (${cfg[down]}) must be below ${up} (${cfg[up]})`);
    }
    if (cfg.step.scale_in_threshold >= cfg.step.scale_out_threshold) {
      report('step', 'step', `step.scale_in_threshold (${cfg.step.scale_in_threshold}) must be below step.scale_out_threshold (${cfg.step.scale_out_threshold})`);
    }
  }
});

/** A configuration rejected by validation; `issues` names every offending path. */
export class ScalingConfigError extends Error {
  override readonly name = 'ScalingConfigError';
  constructor(
    readonly issues: ReadonlyArray<{ path: string; message: string }>,
    options?: { cause?: unknown },
  ) {
    super(`invalid scaling configuration: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, options);
  }
}

/** Formats zod issues as `a.b.c` paths with messages. */
export function issuesOf(error: z.ZodError): Array<{ path: string; message: string }> {
  return error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
}

/**
 * Validates a configuration document (the guide's flat JSON, or the full shape with
 * `services`) and applies the defaults. Throws {@link ScalingConfigError} naming every problem.
 */
export function parseScalingConfig(input: unknown): ScalingConfig {
  const result = scalingConfigSchema.safeParse(input ?? {});
  if (!result.success) throw new ScalingConfigError(issuesOf(result.error), { cause: result.error });
  return result.data;
}

/** The effective configuration of one service. */
export function resolveServiceConfig(config: ScalingConfig, service: string): ServiceScalingConfig {
  return { ...mergeService(config, service), dry_run: config.dry_run };
}

/** The default configuration, exactly the guide's values. */
export function defaultScalingConfig(): ScalingConfig {
  return parseScalingConfig({});
}

const boolEnv = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');
const intEnv = z.string().regex(/^\d+$/, 'must be a whole number').transform(Number);

/** The guide's environment variables that override the runtime scaling configuration. */
export const scalingEnvSchema = z.object({
  AUTO_SCALING_ENABLED: boolEnv.optional(),
  SCALING_CHECK_INTERVAL: intEnv.optional(),
  MIN_INSTANCES: intEnv.optional(),
  MAX_INSTANCES: intEnv.optional(),
});

/**
 * Applies the guide's environment variables over a configuration document, then validates the
 * result as a whole (so `MIN_INSTANCES=12` with the default max is rejected, naming both).
 */
export function applyScalingEnv(document: Record<string, unknown>, env: Record<string, string | undefined>): ScalingConfig {
  const parsed = scalingEnvSchema.safeParse(env);
  if (!parsed.success) {
    throw new ScalingConfigError(
      parsed.error.issues.map((i) => ({ path: `env.${i.path.map(String).join('.')}`, message: i.message })),
      { cause: parsed.error },
    );
  }
  const e = parsed.data;
  const overlay: Record<string, unknown> = { ...document };
  if (e.AUTO_SCALING_ENABLED !== undefined) overlay['enabled'] = e.AUTO_SCALING_ENABLED;
  if (e.SCALING_CHECK_INTERVAL !== undefined) overlay['check_interval'] = e.SCALING_CHECK_INTERVAL;
  if (e.MIN_INSTANCES !== undefined) overlay['min_instances'] = e.MIN_INSTANCES;
  if (e.MAX_INSTANCES !== undefined) overlay['max_instances'] = e.MAX_INSTANCES;
  return parseScalingConfig(overlay);
}
