/**
 * ECS as the scaling target: `DescribeServices` (at most 10 services per call, ECS's limit,
 * grouped by cluster, with the services' tags) for running, pending and desired counts, whether
 * a deployment is rolling out and the stops marked on the service; `UpdateService` to set a new
 * desired count; `TagResource` / `UntagResource` to mark a stop where an evaluation without the
 * catalog reads it ({@link STOPPED_TAG}, {@link STOPPED_ALL_TAG}).
 *
 * @example
 * ```ts
 * const target = new EcsScalingTarget({ client: new ECSClient({}), topology });
 * const counts = await target.describe(['backend-read', 'frontend']);
 * await target.setDesired('backend-read', 4);
 * ```
 */
import { DescribeServicesCommand, TagResourceCommand, UntagResourceCommand, UpdateServiceCommand, type ECSClient, type Service } from '@aws-sdk/client-ecs';
import type { ScalingTarget, StopMark, TasksReading } from '../../core/scaling/ports.js';
import type { TaskCounts } from '../../core/scaling/types.js';
import { STOPPED_ALL_TAG, STOPPED_TAG, type Topology } from './topology.js';

/** ECS's limit of services per DescribeServices call. */
export const DESCRIBE_BATCH = 10;

/** ECS refused to mark or clear a stop on one or more services; the message names each. */
export class EcsTagError extends Error {
  override readonly name = 'EcsTagError';
}

/** ECS tag values: at most 256 characters of letters, digits, spaces and `+ - = . _ : / @`. */
function tagValue(text: string): string {
  return text.replace(/[^\p{L}\p{N} +\-=._:/@]/gu, '_').slice(0, 256);
}

/** The stops marked on the ECS service of the scaled service `name`. */
function stopsOf(name: string, service: Service): StopMark[] {
  const stops: StopMark[] = [];
  for (const tag of service.tags ?? []) {
    if (tag.key === STOPPED_ALL_TAG) stops.push({ scope: '*', by: tag.value ?? '' });
    else if (tag.key === STOPPED_TAG) stops.push({ scope: name, by: tag.value ?? '' });
  }
  return stops;
}

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
            new DescribeServicesCommand({ cluster, services: members.map((m) => m.ecsService), include: ['TAGS'] }),
            signal === undefined ? {} : { abortSignal: signal },
          );
          for (const m of members) {
            const found = (out.services ?? []).find((s) => s.serviceName === m.ecsService || s.serviceArn?.endsWith(`/${m.ecsService}`) === true);
            const failure = (out.failures ?? []).find((f) => f.arn?.endsWith(`/${m.ecsService}`) === true || f.arn === m.ecsService);
            if (found && found.status !== 'INACTIVE') {
              const stops = stopsOf(m.service, found);
              readings.set(m.service, { ok: true, tasks: countsOf(found), ...(stops.length === 0 ? {} : { stops }) });
            }
            else readings.set(m.service, { ok: false, error: `ECS does not report ${cluster}/${m.ecsService}: ${failure?.reason ?? found?.status ?? 'not returned'}` });
          }
        } catch (err) {
          for (const m of members) readings.set(m.service, { ok: false, error: `ECS DescribeServices failed: ${describeError(err)}` });
        }
      }),
    );
    return readings;
  }

  /**
   * Tags (or untags) the services a stop covers: {@link STOPPED_ALL_TAG} on every scaled service
   * for `*`, {@link STOPPED_TAG} on the one service otherwise. The service ARNs come from
   * DescribeServices. Every service is tried; a refusal of any throws an {@link EcsTagError}
   * naming each service that was not marked.
   */
  async markStop(scope: string, by: string | undefined, signal?: AbortSignal): Promise<void> {
    const services = scope === '*' ? this.services() : [scope];
    const key = scope === '*' ? STOPPED_ALL_TAG : STOPPED_TAG;
    const options = signal === undefined ? {} : { abortSignal: signal };
    const failures: string[] = [];
    await Promise.all(
      services.map(async (service) => {
        const t = this.options.topology.services[service];
        if (!t) {
          failures.push(`service ${service} is missing from the scaling topology`);
          return;
        }
        const verb = by === undefined ? 'UntagResource' : 'TagResource';
        try {
          const out = await this.options.client.send(new DescribeServicesCommand({ cluster: t.cluster, services: [t.ecsService] }), options);
          const arn = out.services?.find((s) => s.status !== 'INACTIVE')?.serviceArn;
          if (arn === undefined) throw new Error(`ECS does not report the service: ${out.failures?.[0]?.reason ?? 'not returned'}`);
          if (by === undefined) await this.options.client.send(new UntagResourceCommand({ resourceArn: arn, tagKeys: [key] }), options);
          else await this.options.client.send(new TagResourceCommand({ resourceArn: arn, tags: [{ key, value: tagValue(by) }] }), options);
        } catch (err) {
          failures.push(`ECS ${verb} ${t.cluster}/${t.ecsService} failed: ${describeError(err)}`);
        }
      }),
    );
    if (failures.length > 0) throw new EcsTagError(failures.sort().join('; '));
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
