/**
 * Application Auto Scaling as the registry of the services' scalable targets. Each evaluation
 * describes the targets (50 resource ids per call, following NextToken), registers the ones
 * whose min/max drifted from the configuration (or that were never registered) so the console
 * and other tools see the real bounds, and reports `SuspendedState` so the controller honours
 * an operator's suspension of dynamic scaling.
 *
 * @example
 * ```ts
 * const registry = new AppAutoScalingRegistry({ client: new ApplicationAutoScalingClient({}), topology });
 * const { suspensions } = await registry.sync(new Map([['worker', { min: 2, max: 10 }]]));
 * ```
 */
import {
  DescribeScalableTargetsCommand,
  RegisterScalableTargetCommand,
  type ApplicationAutoScalingClient,
  type ScalableTarget,
} from '@aws-sdk/client-application-auto-scaling';
import type { ScalableTargetRegistry, Suspension } from '../../core/scaling/ports.js';
import type { Topology } from './topology.js';

/** Application Auto Scaling's limit of resource ids per DescribeScalableTargets call. */
export const DESCRIBE_TARGETS_BATCH = 50;
const DIMENSION = 'ecs:service:DesiredCount';

export interface AppAutoScalingRegistryOptions {
  readonly client: ApplicationAutoScalingClient;
  readonly topology: Topology;
}

/** The resource id of an ECS service's scalable target. */
export function resourceIdOf(cluster: string, ecsService: string): string {
  return `service/${cluster}/${ecsService}`;
}

function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

export class AppAutoScalingRegistry implements ScalableTargetRegistry {
  constructor(private readonly options: AppAutoScalingRegistryOptions) {}

  async sync(
    bounds: ReadonlyMap<string, { min: number; max: number }>,
    signal?: AbortSignal,
  ): Promise<{ suspensions: ReadonlyMap<string, Suspension>; warnings: readonly string[] }> {
    const opts = signal === undefined ? {} : { abortSignal: signal };
    const warnings: string[] = [];
    const ids = new Map<string, string>();
    for (const service of bounds.keys()) {
      const t = this.options.topology.services[service];
      if (t) ids.set(resourceIdOf(t.cluster, t.ecsService), service);
      else warnings.push(`service ${service} is missing from the scaling topology`);
    }
    const found = new Map<string, ScalableTarget>();
    const all = [...ids.keys()];
    for (let i = 0; i < all.length; i += DESCRIBE_TARGETS_BATCH) {
      let nextToken: string | undefined;
      do {
        const page = await this.options.client.send(
          new DescribeScalableTargetsCommand({
            ServiceNamespace: 'ecs',
            ScalableDimension: DIMENSION,
            ResourceIds: all.slice(i, i + DESCRIBE_TARGETS_BATCH),
            ...(nextToken === undefined ? {} : { NextToken: nextToken }),
          }),
          opts,
        );
        for (const target of page.ScalableTargets ?? []) if (target.ResourceId !== undefined) found.set(target.ResourceId, target);
        nextToken = page.NextToken;
      } while (nextToken !== undefined);
    }

    const suspensions = new Map<string, Suspension>();
    await Promise.all(
      [...ids].map(async ([resourceId, service]) => {
        const wanted = bounds.get(service);
        const target = found.get(resourceId);
        suspensions.set(service, {
          scaleOut: target?.SuspendedState?.DynamicScalingOutSuspended === true,
          scaleIn: target?.SuspendedState?.DynamicScalingInSuspended === true,
        });
        if (wanted === undefined || (target?.MinCapacity === wanted.min && target.MaxCapacity === wanted.max)) return;
        try {
          await this.options.client.send(
            new RegisterScalableTargetCommand({
              ServiceNamespace: 'ecs',
              ScalableDimension: DIMENSION,
              ResourceId: resourceId,
              MinCapacity: wanted.min,
              MaxCapacity: wanted.max,
            }),
            opts,
          );
        } catch (err) {
          warnings.push(`could not register ${resourceId} with min ${wanted.min} and max ${wanted.max}: ${describeError(err)}`);
        }
      }),
    );
    return { suspensions, warnings };
  }
}
