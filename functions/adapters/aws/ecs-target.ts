/**
 * ECS as the scaling target: `DescribeServices` (at most 10 services per call, ECS's limit,
 * grouped by cluster) for running, pending and desired counts and whether a deployment is
 * rolling out; `UpdateService` to set a new desired count.
 *
 * @example
 * ```ts
 * const target = new EcsScalingTarget({ client: new ECSClient({}), topology });
 * const counts = await target.describe(['backend-read', 'frontend']);
 * await target.setDesired('backend-read', 4);
 * ```
 */
import { DescribeServicesCommand, UpdateServiceCommand, type ECSClient, type Service } from '@aws-sdk/client-ecs';
import type { ScalingTarget, TasksReading } from '../../core/scaling/ports.js';
import type { TaskCounts } from '../../core/scaling/types.js';
import type { Topology } from './topology.js';

/** ECS's limit of services per DescribeServices call. */
export const DESCRIBE_BATCH = 10;

/** ECS refused a desired-count change; `cause` holds the SDK error. */
export class EcsUpdateError extends Error {
  override readonly name = 'EcsUpdateError';
}

export interface EcsScalingTargetOptions {
  readonly client: ECSClient;
  readonly topology: Topology;
}

/** A deployment is in progress while more than one deployment exists or the primary is still rolling out. */
function countsOf(service: Service): TaskCounts {
  const deployments = service.deployments ?? [];
  const rolling = deployments.length > 1 || deployments.some((d) => d.rolloutState === 'IN_PROGRESS');
  return {
    running: service.runningCount ?? 0,
    pending: service.pendingCount ?? 0,
    desired: service.desiredCount ?? 0,
    deploymentInProgress: rolling,
  };
}

function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

export class EcsScalingTarget implements ScalingTarget {
  constructor(private readonly options: EcsScalingTargetOptions) {}

  services(): readonly string[] {
    return Object.keys(this.options.topology.services).sort();
  }

  async describe(services: readonly string[], signal?: AbortSignal): Promise<ReadonlyMap<string, TasksReading>> {
    const readings = new Map<string, TasksReading>();
    const byCluster = new Map<string, Array<{ service: string; ecsService: string }>>();
    for (const service of services) {
      const t = this.options.topology.services[service];
      if (!t) {
        readings.set(service, { ok: false, error: `service ${service} is missing from the scaling topology` });
        continue;
      }
      const list = byCluster.get(t.cluster) ?? [];
      list.push({ service, ecsService: t.ecsService });
      byCluster.set(t.cluster, list);
    }
    const batches: Array<{ cluster: string; members: Array<{ service: string; ecsService: string }> }> = [];
    for (const [cluster, members] of byCluster) {
      for (let i = 0; i < members.length; i += DESCRIBE_BATCH) batches.push({ cluster, members: members.slice(i, i + DESCRIBE_BATCH) });
    }
    await Promise.all(
      batches.map(async ({ cluster, members }) => {
        try {
          const out = await this.options.client.send(
            new DescribeServicesCommand({ cluster, services: members.map((m) => m.ecsService) }),
            signal === undefined ? {} : { abortSignal: signal },
          );
          for (const m of members) {
            const found = (out.services ?? []).find((s) => s.serviceName === m.ecsService || s.serviceArn?.endsWith(`/${m.ecsService}`) === true);
            const failure = (out.failures ?? []).find((f) => f.arn?.endsWith(`/${m.ecsService}`) === true || f.arn === m.ecsService);
            if (found && found.status !== 'INACTIVE') readings.set(m.service, { ok: true, tasks: countsOf(found) });
            else readings.set(m.service, { ok: false, error: `ECS does not report ${cluster}/${m.ecsService}: ${failure?.reason ?? found?.status ?? 'not returned'}` });
          }
        } catch (err) {
          for (const m of members) readings.set(m.service, { ok: false, error: `ECS DescribeServices failed: ${describeError(err)}` });
        }
      }),
    );
    return readings;
  }

  async setDesired(service: string, desired: number, signal?: AbortSignal): Promise<void> {
    const t = this.options.topology.services[service];
    if (!t) throw new EcsUpdateError(`service ${service} is missing from the scaling topology`);
    try {
      await this.options.client.send(
        new UpdateServiceCommand({ cluster: t.cluster, service: t.ecsService, desiredCount: desired }),
        signal === undefined ? {} : { abortSignal: signal },
      );
    } catch (err) {
      throw new EcsUpdateError(`ECS UpdateService ${t.cluster}/${t.ecsService} desiredCount=${desired} failed: ${describeError(err)}`, { cause: err });
    }
  }
}
