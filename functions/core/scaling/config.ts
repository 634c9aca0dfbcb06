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

const SERVICE_NAME_RULE = 'service names are lower-case letters, digits and dashes';
const percent = z.number().min(0).max(100);
const nonNegative = z.number().min(0);
const seconds = z.number().int().min(0);

/** One step of a step-scaling policy, bounds relative to the alarm threshold (AWS semantics). */
const stepAdjustment = z.strictObject({
  lower: z.number().nullable().default(null),
  upper: z.number().nullable().default(null),
  /** Tasks (ChangeInCapacity), percent (PercentChangeInCapacity) or the count (ExactCapacity); AWS takes whole numbers. */
  adjustment: z.number().int(),
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
  policies: z.array(hpaPolicy).min(1).optional(),
});
const hpaSettings = z.strictObject({
  tolerance: z.number().min(0).max(1).default(0.1),
  behavior: z.strictObject({ scaleUp: hpaRules.optional(), scaleDown: hpaRules.optional() }).default({}),
});

/**
 * The `ca-dms` policy's settings (README, "The ca-dms policy"). One is the trade-off a user
 * chooses (`target_violation_rate`); the rest shape the forecast and rarely need changing. The
 * defaults were chosen by leave-one-out over the public traces and synthetic weeks
 * (`npm run bench:policies`).
 */
export const CA_DMS_DEFAULTS = {
  /** Share (0..0.5) of periods in which demand may exceed the forecast plus headroom: lower buys fewer SLO violations with more tasks. */
  target_violation_rate: 0.1,
  /** Weight of the newest demand estimate in the smoothed level (Holt's alpha). */
  level_weight: 0.1,
  /** Weight of the newest change in the smoothed trend (Holt's beta). */
  trend_weight: 0.01,
  /** Periods from the last measured period until a task started now serves (start-up time / check interval, rounded up, plus one). */
  lead_periods: 3,
  /** How the forecast error is taken to grow with the load: 0 the same at every level, 0.5 with its square root, 1 in proportion. */
  noise_exponent: 0,
  /** Step of the online headroom tracker, in units of the typical forecast error: higher adapts faster and wanders more. */
  learning_rate: 0.02,
  /** Scale in only to a count that would still serve the forecast's peak with this fraction of a task more (hysteresis; the CPU target rule keeps a 10 % tolerance instead, except while the seasonal forecast is used). */
  scale_in_slack: 1,
} as const;

const caDmsFields = {
  target_violation_rate: z.number().gt(0).max(0.5),
  level_weight: z.number().gt(0).max(1),
  trend_weight: z.number().min(0).max(1),
  lead_periods: z.number().int().min(1).max(60),
  noise_exponent: z.number().min(0).max(1),
  learning_rate: z.number().gt(0).max(1),
  scale_in_slack: z.number().min(0).max(5),
};
const caDmsSettings = z.strictObject(caDmsFields).default(CA_DMS_DEFAULTS);
/** A service's override: the fields it sets and nothing else (no defaults filled in over the global ones). */
const caDmsOverride = z.strictObject(caDmsFields).partial();

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
  ca_dms: caDmsSettings,
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

/**
 * A section's per-service override: every field optional and without its default. zod's
 * `.partial()` keeps the defaults, so an override naming one field would come back with every
 * other field at its built-in default and the merge would reset them over the global section.
 */
function overrideOf<S extends z.ZodRawShape>(section: z.ZodObject<S>): z.ZodObject<{ [K in keyof S]: z.ZodOptional<S[K]> }> {
  const shape = Object.fromEntries(Object.entries(section.shape).map(([key, field]) => [key, z.optional(field instanceof z.ZodDefault ? field.unwrap() : field)]));
  // The unwrapped fields parse to the same values as the originals, minus the filled-in default.
  return z.strictObject(shape) as unknown as z.ZodObject<{ [K in keyof S]: z.ZodOptional<S[K]> }>;
}

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
  targets: overrideOf(targets).optional(),
  step: overrideOf(stepSettings).optional(),
  hpa: overrideOf(hpaSettings).optional(),
  ca_dms: caDmsOverride.optional(),
});
export type ServiceOverride = z.infer<typeof serviceOverrideSchema>;

const checkIntervalSchema = z.number().int().min(1).max(86_400);

const scalingConfigObject = z.strictObject({
  enabled: serviceSettingsShape.enabled.default(serviceDefaults.enabled),
  dry_run: z.boolean().default(false),
  /** Seconds between scheduled evaluations (SCALING_CHECK_INTERVAL). */
  check_interval: checkIntervalSchema.default(30),
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
  ca_dms: z.strictObject(caDmsFields).partial().transform((o) => ({ ...CA_DMS_DEFAULTS, ...o })).default(CA_DMS_DEFAULTS),
  services: z
    .preprocess(
      (value, ctx) => {
        // z.record skips a key named __proto__ without checking it or its value: named here, as the key check would.
        if (typeof value === 'object' && value !== null && Object.hasOwn(value, '__proto__')) {
          ctx.issues.push({ code: 'custom', path: ['__proto__'], message: SERVICE_NAME_RULE, input: value });
        }
        return value;
      },
      z.record(z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, SERVICE_NAME_RULE), serviceOverrideSchema),
    )
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
    ca_dms: { ...global.ca_dms, ...(o.ca_dms ?? {}) },
  } as Omit<ServiceScalingConfig, 'service' | 'cooldown_out' | 'cooldown_in'>;
  return {
    ...merged,
    service,
    cooldown_out: merged.scale_out_cooldown ?? merged.scale_cooldown,
    cooldown_in: merged.scale_in_cooldown ?? merged.scale_cooldown,
  };
}

type StepSettings = ScalingConfig['step'];

/**
 * AWS's rules for a list of step adjustments: each interval non-empty, and sorted by lower
 * bound the intervals neither overlap nor leave a gap. Scale-out steps add capacity and
 * scale-in steps remove it (for ExactCapacity: a count of at least 0).
 */
function stepProblems(step: StepSettings): Array<{ field: string; message: string }> {
  const problems: Array<{ field: string; message: string }> = [];
  for (const list of ['scale_out_steps', 'scale_in_steps'] as const) {
    const steps = step[list];
    steps.forEach((st, i) => {
      if (st.lower !== null && st.upper !== null && st.lower >= st.upper) {
        problems.push({ field: `${list}.${i}`, message: `lower (${st.lower}) must be below upper (${st.upper})` });
      }
      const sign = list === 'scale_out_steps' ? 1 : -1;
      if (step.adjustment_type === 'ExactCapacity' ? st.adjustment < 0 : Math.sign(st.adjustment) !== sign) {
        const want = step.adjustment_type === 'ExactCapacity' ? 'at least 0' : sign > 0 ? 'positive' : 'negative';
        problems.push({ field: `${list}.${i}.adjustment`, message: `${list} adjustments must be ${want} (${step.adjustment_type})` });
      }
    });
    const sorted = [...steps].sort((a, b) => (a.lower ?? -Infinity) - (b.lower ?? -Infinity));
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const next = sorted[i]!;
      if (prev.upper === null || next.lower === null || prev.upper !== next.lower) {
        problems.push({
          field: list,
          message: `step intervals must neither overlap nor leave a gap: [${prev.lower ?? '-inf'}, ${prev.upper ?? '+inf'}) is followed by [${next.lower ?? '-inf'}, ${next.upper ?? '+inf'})`,
        });
        break;
      }
    }
  }
  if (step.scale_in_threshold >= step.scale_out_threshold) {
    problems.push({
      field: 'scale_in_threshold',
      message: `step.scale_in_threshold (${step.scale_in_threshold}) must be below step.scale_out_threshold (${step.scale_out_threshold})`,
    });
  }
  return problems;
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
    // `params.involves` lists every field the rule read, so a second validation pass can drop
    // problems that only exist because one of those fields was invalid (see parseScalingConfig).
    const report = (a: string, b: string, message: string, at: string = a): void => {
      let path: (string | number)[] | null;
      if (prefix.length === 0) path = at.split('.');
      else if (a in own) path = [...prefix, ...at.split('.')];
      else if (b in own) path = [...prefix, b];
      else path = null;
      if (path) {
        const involves = [a, b].flatMap((f) => [f, [...prefix, f].join('.')]);
        ctx.addIssue({ code: 'custom', path, message, params: { involves } });
      }
    };
    if (cfg.min_instances > cfg.max_instances) {
      report('min_instances', 'max_instances', `min_instances (${cfg.min_instances}) must not exceed max_instances (${cfg.max_instances})`);
    }
    for (const [down, up] of PAIRS) {
      if (cfg[down] >= cfg[up]) report(down, up, `${down} (${cfg[down]}) must be below ${up} (${cfg[up]})`);
    }
    for (const problem of stepProblems(cfg.step)) {
      report('step', 'step', problem.message, `step.${problem.field}`);
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

/**
 * Formats zod issues as `a.b.c` paths with messages; an unknown key is named by its own path
 * (`services.worker.foo: unknown key`) rather than by the object that holds it.
 */
export function issuesOf(error: z.ZodError): Array<{ path: string; message: string }> {
  return error.issues.flatMap((i) => {
    const path = i.path.map(String);
    if (i.code === 'unrecognized_keys') return i.keys.map((k) => ({ path: [...path, k].join('.'), message: 'unknown key' }));
    return [{ path: path.join('.'), message: i.message }];
  });
}

/** Removes the value at `path` from a plain-data tree (arrays are dropped whole). */
function removeAt(tree: Record<string, unknown>, path: readonly PropertyKey[]): string | undefined {
  const arrayAt = path.findIndex((k) => typeof k === 'number');
  const cut = arrayAt === -1 ? path : path.slice(0, arrayAt);
  if (cut.length === 0) return undefined;
  let node: unknown = tree;
  for (const key of cut.slice(0, -1)) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  if (typeof node !== 'object' || node === null) return undefined;
  delete (node as Record<PropertyKey, unknown>)[cut[cut.length - 1]!];
  return cut.map(String).join('.');
}

/**
 * The cross-field problems a document has besides its field-level ones. zod skips refinements
 * once a field failed, so without this pass `{min_instances: 12, foo: 1}` would name only
 * `foo`. The pass removes every offending value (defaults take their place), validates again,
 * and keeps the cross-field problems that do not rest on a removed value.
 */
function crossFieldIssues(input: unknown, first: readonly z.core.$ZodIssue[]): Array<{ path: string; message: string }> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return [];
  let doc: Record<string, unknown>;
  try {
    doc = structuredClone(input) as Record<string, unknown>;
  } catch {
    return [];
  }
  const removed = new Set<string>();
  let issues = first;
  // Each round removes the values the last one rejected; three rounds cover nested objects.
  for (let round = 0; round < 3; round++) {
    for (const issue of issues) {
      if (issue.code === 'custom') continue;
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          const gone = removeAt(doc, [...issue.path, key]);
          if (gone) removed.add(gone);
        }
      } else {
        const gone = removeAt(doc, issue.path);
        if (gone) removed.add(gone);
      }
    }
    const again = scalingConfigSchema.safeParse(doc);
    if (again.success) return [];
    issues = again.error.issues;
    if (issues.every((i) => i.code === 'custom')) break;
  }
  const restsOnRemoved = (involves: unknown): boolean =>
    Array.isArray(involves) &&
    involves.some((f) => typeof f === 'string' && [...removed].some((r) => r === f || r.startsWith(`${f}.`) || f.startsWith(`${r}.`)));
  return issues
    .filter((i) => i.code === 'custom' && !restsOnRemoved((i as z.core.$ZodIssueCustom).params?.['involves']))
    .map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
}

/**
 * Validates a configuration document (the guide's flat JSON, or the full shape with
 * `services`) and applies the defaults. Throws {@link ScalingConfigError} naming every problem:
 * field-level ones and cross-field ones (min above max, scale-down at or above scale-up) at once.
 *
 * @example
 * ```ts
 * parseScalingConfig({ cpu_scale_up: 80.0, cpu_scale_down: 30.0, min_instances: 2, max_instances: 10, scale_cooldown: 300 });
 * parseScalingConfig({ min_instances: 12, foo: 1 }); // throws, naming `foo` and `min_instances`
 * ```
 */
export function parseScalingConfig(input: unknown): ScalingConfig {
  const result = scalingConfigSchema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issues = issuesOf(result.error);
  for (const extra of crossFieldIssues(input ?? {}, result.error.issues)) {
    if (!issues.some((i) => i.path === extra.path && i.message === extra.message)) issues.push(extra);
  }
  throw new ScalingConfigError(issues, { cause: result.error });
}

/** The effective configuration of one service. */
export function resolveServiceConfig(config: ScalingConfig, service: string): ServiceScalingConfig {
  return { ...mergeService(config, service), dry_run: config.dry_run };
}

/** The default configuration, exactly the guide's values. */
export function defaultScalingConfig(): ScalingConfig {
  return parseScalingConfig({});
}

// Read as SHARDING_ENABLED is (core/sharding/config.ts): any case, blanks around ignored, so the
// guide's two switches never disagree on one value ("True" turned sharding on and was refused here).
const boolEnv = z
  .string()
  .transform((v) => v.trim().toLowerCase())
  .pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no'], { error: 'must be true or false (also 1/0, yes/no)' }))
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
/**
 * A whole-number variable within the range of the document field it sets. The range is checked on
 * the text as given, before it becomes a number: past 2^53 `Number()` rounds
 * (`99999999999999999999` -> 1e20), and the message would name a value nobody typed.
 */
function intEnv(field: z.ZodNumber): z.ZodType<number, string> {
  const min = field.minValue ?? 0;
  const max = field.maxValue ?? Number.MAX_SAFE_INTEGER;
  const expected = `must be a whole number from ${min} to ${max}`;
  return z.string().superRefine((v, ctx) => {
    const inRange = /^\d+$/.test(v) && BigInt(v) >= BigInt(min) && BigInt(v) <= BigInt(max);
    if (!inRange) ctx.addIssue({ code: 'custom', message: `${expected}, got "${v}"` });
  }).transform(Number);
}

/** The guide's environment variables that override the runtime scaling configuration. */
export const scalingEnvSchema = z.object({
  AUTO_SCALING_ENABLED: boolEnv.optional(),
  SCALING_CHECK_INTERVAL: intEnv(checkIntervalSchema).optional(),
  MIN_INSTANCES: intEnv(serviceSettingsShape.min_instances).optional(),
  MAX_INSTANCES: intEnv(serviceSettingsShape.max_instances).optional(),
});

/**
 * Applies the guide's environment variables over a configuration document, then validates the
 * result as a whole (so `MIN_INSTANCES=12` with the default max is rejected, naming both).
 * An unparsable variable is named as `env.NAME`, alongside any problem of the document.
 *
 * @example
 * ```ts
 * applyScalingEnv({ cpu_scale_up: 75 }, process.env); // MIN_INSTANCES=3 -> min_instances 3
 * ```
 */
export function applyScalingEnv(document: Record<string, unknown>, env: Record<string, string | undefined>): ScalingConfig {
  const overlay: Record<string, unknown> = { ...document };
  const envIssues: Array<{ path: string; message: string }> = [];
  for (const [name, key] of ENV_KEYS) {
    if (env[name] === undefined) continue;
    const parsed = scalingEnvSchema.shape[name].safeParse(env[name]);
    if (parsed.success) overlay[key] = parsed.data;
    else envIssues.push(...parsed.error.issues.map((i) => ({ path: `env.${name}`, message: i.message })));
  }
  if (envIssues.length === 0) return parseScalingConfig(overlay);
  // Report the document's own problems too, so one run names everything that is wrong.
  let documentIssues: ReadonlyArray<{ path: string; message: string }> = [];
  try {
    parseScalingConfig(overlay);
  } catch (error) {
    if (!(error instanceof ScalingConfigError)) throw error;
    documentIssues = error.issues;
  }
  throw new ScalingConfigError([...envIssues, ...documentIssues]);
}

const ENV_KEYS = [
  ['AUTO_SCALING_ENABLED', 'enabled'],
  ['SCALING_CHECK_INTERVAL', 'check_interval'],
  ['MIN_INSTANCES', 'min_instances'],
  ['MAX_INSTANCES', 'max_instances'],
] as const;
