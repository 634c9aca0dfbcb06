/**
 * Policy variants for the simulator: `POLICY` or `POLICY:path=value[,path=value...]`, where each
 * path is a dotted path into that policy's resolved configuration. A variant is one more row
 * of a simulation, named by its spec verbatim, so a user can compare a policy against itself
 * with one setting moved (or an anchor set the way they would set it).
 *
 * The configuration schema is the only judge of a value: the overrides are written into the
 * resolved configuration and the whole is validated again, so cross-field rules (scale-in
 * below scale-out, min below max) hold for variants exactly as for a stored configuration.
 */
import type { PolicyName, ServiceScalingConfig } from '../config.js';
import { parseScalingConfig, POLICY_NAMES, resolveServiceConfig, ScalingConfigError } from '../config.js';
import { isPolicyName } from '../policies/index.js';

/** One `path=value` of a spec. */
export interface VariantOverride {
  /** The dotted path as written. */
  readonly path: string;
  readonly value: unknown;
}

/** A parsed `--variant` spec. */
export interface VariantSpec {
  /** The spec verbatim: the row's name. */
  readonly spec: string;
  readonly policy: PolicyName;
  readonly overrides: readonly VariantOverride[];
}

/** A spec that cannot be used; the message quotes the spec and names what is wrong in it. */
export class VariantError extends Error {
  override readonly name = 'VariantError';
  constructor(
    readonly spec: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(`"${spec}": ${problem}`, options);
  }
}

/**
 * Fields of the resolved configuration that are derived or fixed by the variant itself, so a
 * path to them would be silently undone: the policy is the part before the colon, the
 * cooldowns in force come from `scale_out_cooldown`/`scale_in_cooldown`/`scale_cooldown`.
 */
const NOT_SETTABLE: Readonly<Record<string, string>> = {
  policy: 'the policy is the part before the colon',
  service: 'the simulated service is not a setting',
  cooldown_out: 'it is derived; set scale_out_cooldown or scale_cooldown',
  cooldown_in: 'it is derived; set scale_in_cooldown or scale_cooldown',
  services: 'a variant sets one policy\'s resolved settings; per-service overrides do not apply',
  check_interval: 'the simulator evaluates every --tick seconds',
};

const SEGMENT = /^[A-Za-z_][A-Za-z0-9_]*$|^\d+$/;

/**
 * A value as written: JSON when it parses as JSON (numbers, `true`, `false`, `null`, quoted
 * strings), otherwise the bare text (so `step.metric=memory` needs no quotes).
 */
function parseValue(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/**
 * Parses a spec's syntax (not yet its values; see {@link applyVariant}).
 *
 * @throws {VariantError} for an unknown policy, an empty or malformed `path=value`, or a path
 *   given twice.
 * @example
 * ```ts
 * parseVariant('step:step.scale_out_threshold=60,step.scale_in_threshold=30');
 * // { spec: '…', policy: 'step', overrides: [{ path: 'step.scale_out_threshold', value: 60 }, …] }
 * ```
 */
export function parseVariant(spec: string): VariantSpec {
  const colon = spec.indexOf(':');
  const policy = (colon === -1 ? spec : spec.slice(0, colon)).trim();
  if (!isPolicyName(policy)) {
    throw new VariantError(spec, `unknown policy "${policy}"; valid policies: ${POLICY_NAMES.join(', ')}`);
  }
  if (colon === -1) return { spec, policy, overrides: [] };
  const body = spec.slice(colon + 1);
  if (body.trim() === '') throw new VariantError(spec, 'nothing after the colon; expected path=value[,path=value...] or the policy name alone');
  const overrides: VariantOverride[] = [];
  for (const pair of body.split(',')) {
    const eq = pair.indexOf('=');
    const path = (eq === -1 ? pair : pair.slice(0, eq)).trim();
    if (eq === -1 || path === '') throw new VariantError(spec, `"${pair}" is not path=value`);
    const bad = path.split('.').find((s) => !SEGMENT.test(s));
    if (bad !== undefined) throw new VariantError(spec, `path "${path}": "${bad}" is not a setting name`);
    const top = path.split('.')[0] as string;
    const why = NOT_SETTABLE[top];
    if (why !== undefined) throw new VariantError(spec, `path "${path}" cannot be set: ${why}`);
    if (overrides.some((o) => o.path === path)) throw new VariantError(spec, `path "${path}" is given twice`);
    const raw = pair.slice(eq + 1).trim();
    if (raw === '') throw new VariantError(spec, `path "${path}" has no value`);
    overrides.push({ path, value: parseValue(raw) });
  }
  return { spec, policy, overrides };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Writes `value` at `path` in a plain-data tree, creating missing objects on the way. */
function setAt(tree: Record<string, unknown>, spec: string, path: string, value: unknown): void {
  const segments = path.split('.');
  let node: unknown = tree;
  for (let i = 0; i < segments.length - 1; i++) {
    const key = segments[i] as string;
    const here = segments.slice(0, i + 1).join('.');
    if (Array.isArray(node)) {
      if (!/^\d+$/.test(key) || Number(key) >= node.length) throw new VariantError(spec, `path "${path}": ${here} is not an element of the list (it has ${node.length})`);
      node = node[Number(key)];
      continue;
    }
    if (!isRecord(node)) throw new VariantError(spec, `path "${path}": ${segments.slice(0, i).join('.')} is not an object`);
    if (node[key] === undefined) node[key] = {};
    node = node[key];
  }
  const last = segments[segments.length - 1] as string;
  if (Array.isArray(node)) {
    if (!/^\d+$/.test(last) || Number(last) >= node.length) throw new VariantError(spec, `path "${path}": not an element of the list (it has ${node.length})`);
    node[Number(last)] = value;
  } else if (isRecord(node)) {
    node[last] = value;
  } else {
    throw new VariantError(spec, `path "${path}": ${segments.slice(0, -1).join('.')} is not an object`);
  }
}

/**
 * The configuration a variant runs with: `base` (that policy's resolved configuration) with the
 * overrides written in, validated again as a whole.
 *
 * @throws {VariantError} naming the path of an unknown setting or of a value the schema rejects.
 * @example
 * ```ts
 * const v = parseVariant('hpa:targets.cpu=55');
 * const config = applyVariant(simulationConfig(v.policy, DEFAULT_MODEL), v); // config.targets.cpu === 55
 * ```
 */
export function applyVariant(base: ServiceScalingConfig, variant: VariantSpec): ServiceScalingConfig {
  const { service, cooldown_out: _out, cooldown_in: _in, ...settings } = base;
  const document = structuredClone(settings) as Record<string, unknown>;
  for (const o of variant.overrides) setAt(document, variant.spec, o.path, o.value);
  try {
    return resolveServiceConfig(parseScalingConfig({ ...document, policy: variant.policy, services: {} }), service);
  } catch (error) {
    if (!(error instanceof ScalingConfigError)) throw error;
    const problems = error.issues.map((i) => (i.message === 'unknown key' ? `unknown setting "${i.path}"` : `${i.path}: ${i.message}`));
    throw new VariantError(variant.spec, problems.join('; '), { cause: error });
  }
}
