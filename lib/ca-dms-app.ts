import type { App, Environment } from 'aws-cdk-lib';
import type { DeploymentConfig } from './config/deployment-config.js';
import type { ControlPlaneEntries } from './control-plane/control-plane.js';
import { applyGuardPosture } from './guard.js';
import { ControlPlaneStack } from './stacks/control-plane-stack.js';
import { DataStack } from './stacks/data-stack.js';
import { NetworkStack } from './stacks/network-stack.js';
import { ObservabilityStack } from './stacks/observability-stack.js';
import { ServicesStack, type ImageBuildContext } from './stacks/services-stack.js';

/** Files outside `lib/` the stacks build from. */
export interface CaDmsSources {
  /** The four Lambda handlers. */
  readonly entries: ControlPlaneEntries;
  /** The SQL migrations folder (catalog/, sharding/, shard/). */
  readonly migrationsDirectory: string;
  /** The nginx sidecar's Docker build. */
  readonly nginxImage: ImageBuildContext;
  /** The demo backend's Docker build (services configured with `{ "kind": "demo" }`). */
  readonly demoBackendImage: ImageBuildContext;
  /** The lock file anchoring Lambda bundling. @default - found upwards from each entry */
  readonly depsLockFilePath?: string;
}

/** The five stacks of one environment. */
export interface CaDmsStacks {
  readonly network: NetworkStack;
  readonly data: DataStack;
  readonly services: ServicesStack;
  readonly controlPlane: ControlPlaneStack;
  readonly observability: ObservabilityStack;
}

/**
 * Adds the CA-DMS stacks for one environment to `app`: network, data (stateful), services,
 * control plane and observability, in dependency order.
 *
 * @example
 * ```ts
 * const app = new App();
 * const config = loadDeploymentConfig({ configDir: 'config', context: (k) => app.node.tryGetContext(k) });
 * const nginxImage = { directory: stageNginxContext('/tmp/ctx/nginx'), file: 'Dockerfile' };
 * const demoBackendImage = { directory: stageBackendContext('/tmp/ctx/backend'), file: 'Dockerfile' };
 * addCaDmsStacks(app, config, { entries, migrationsDirectory, nginxImage, demoBackendImage });
 * ```
 */
export function addCaDmsStacks(app: App, config: DeploymentConfig, sources: CaDmsSources, env?: Environment): CaDmsStacks {
  const stackEnv: Environment = env ?? {
    region: config.region,
    ...(config.account ? { account: config.account } : {}),
  };
  const base = `${pascalName(config.name)}-${config.environment}`;
  const tags = { project: config.name, environment: config.environment };
  const common = { env: stackEnv, tags };

  const network = new NetworkStack(app, `${base}-network`, { ...common, config, description: 'CA-DMS network: VPC, endpoints, flow logs' });
  const data = new DataStack(app, `${base}-data`, {
    ...common,
    config,
    network: network.network,
    description: 'CA-DMS data (stateful): PostgreSQL shards, replicas, proxies, secrets',
  });
  const services = new ServicesStack(app, `${base}-services`, {
    ...common,
    config,
    network: network.network,
    shards: data.shards,
    workerQueue: data.workerQueue.queue,
    nginxImage: sources.nginxImage,
    demoBackendImage: sources.demoBackendImage,
    description: 'CA-DMS services: ECS cluster, Fargate services with nginx sidecars, load balancer',
  });
  const controlPlane = new ControlPlaneStack(app, `${base}-control-plane`, {
    ...common,
    config,
    network: network.network,
    shards: data.shards,
    fleet: services,
    workerQueue: data.workerQueue.queue,
    entries: sources.entries,
    migrationsDirectory: sources.migrationsDirectory,
    depsLockFilePath: sources.depsLockFilePath,
    description: 'CA-DMS scaling control plane: controller, alarm handler, scaling API, migrations',
  });
  const observability = new ObservabilityStack(app, `${base}-observability`, {
    ...common,
    config,
    shards: data.shards,
    fleet: services,
    controlPlane: controlPlane.watched,
    workerQueue: data.workerQueue.queue,
    workerDeadLetterQueue: data.workerQueue.deadLetterQueue,
    description: 'CA-DMS observability: dashboard and alarms',
  });
  applyGuardPosture(app);
  return { network, data, services, controlPlane, observability };
}

function pascalName(name: string): string {
  return name.replace(/(^|-)([a-z0-9])/g, (_m, _d: string, c: string) => c.toUpperCase());
}
