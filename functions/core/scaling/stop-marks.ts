/**
 * What the marks of a stop on the orchestrator (ECS tags) stand for: every way the catalog stops
 * scaling, so that an evaluation without the catalog heeds the same stops as one with it. A scope
 * (`*` for the whole controller, or a service) is stopped by its switch (POST /stop) or by the
 * stored configuration (`enabled: false`, globally or in the service's own settings); its mark is
 * set while either holds and cleared once neither does.
 *
 * @example
 * ```ts
 * if (disabledByConfig(stored.config, 'worker')) await target.markStop('worker', configMarkValue(stored.changedBy, stored.version));
 * ```
 */
import type { ScalingConfig } from './config.js';

/**
 * Whether the configuration itself stops `scope`: `*` by its global `enabled: false`, a service
 * by `enabled: false` in its own settings (the global flag is marked on its own scope, `*`).
 */
export function disabledByConfig(config: ScalingConfig, scope: string): boolean {
  return scope === '*' ? !config.enabled : config.services[scope]?.enabled === false;
}

/** The mark's value for a stop the configuration makes: who wrote that version, which one, and when when known. */
export function configMarkValue(changedBy: string, version: number, changedAt?: Date): string {
  return `${changedBy}${changedAt === undefined ? '' : ` at ${changedAt.toISOString()}`} with enabled=false in configuration version ${version}`;
}

/** The mark's value for a stop a switch makes (POST /stop): who turned it off, and when. */
export function switchMarkValue(changedBy: string, changedAt: Date | number): string {
  return `${changedBy} at ${new Date(changedAt).toISOString()}`;
}
