/**
 * What one stack uses of another: the narrow views the control-plane and observability stacks
 * take instead of whole stacks, so a stack depends on the resources it reads and nothing else
 * (and a test or another app can hand it those without building the producing stack).
 *
 * @example
 * ```ts
 * const fleet: ScaledFleet = servicesStack; // a ServicesStack is one
 * new ControlPlaneStack(app, 'CaDms-dev-control-plane', { config, network, shards, fleet, workerQueue, entries, migrationsDirectory });
 * ```
 */
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sns from 'aws-cdk-lib/aws-sns';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { ServiceName } from '../config/deployment-config.js';

/** The scaled ECS services, their cluster, and the load balancer in front of the web services. */
export interface ScaledFleet {
  readonly cluster: ecs.ICluster;
  readonly services: Readonly<Record<ServiceName, { readonly service: ecs.FargateService }>>;
  /** The web services' target groups (the worker has none). */
  readonly targetGroups: Readonly<Record<Exclude<ServiceName, 'worker'>, elbv2.ApplicationTargetGroup>>;
  readonly loadBalancer: { readonly alb: elbv2.ApplicationLoadBalancer };
}

/** The control-plane functions, by the names the dashboard and alarms give them. */
export type ControlPlaneFunctions = Readonly<Record<'Evaluate' | 'Alarm' | 'Api' | 'Migrate' | 'Moves', lambda.IFunction>>;

/** What the observability stack watches of the control plane, and where its alarms go. */
export interface WatchedControlPlane {
  /** Every alarm publishes here. */
  readonly alarmTopic: sns.ITopic;
  readonly functions: ControlPlaneFunctions;
  /** The failure queues worth an alarm, by function (see the observability stack for why not the moves worker's). */
  readonly deadLetterQueues: Readonly<Record<string, sqs.IQueue>>;
  /** The moves worker's EventBridge rule, whose failed deliveries raise an alarm. */
  readonly movesScheduleRuleName: string;
}
