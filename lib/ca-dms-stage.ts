import { Stage, type Environment, type StageProps } from 'aws-cdk-lib';
import type { Construct } from 'constructs';
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

export interface CaDmsStageProps extends Omit<StageProps, 'stageName'> {
  /** The environment's validated deployment configuration. */
  readonly config: DeploymentConfig;
  /** What the stacks build from. */
  readonly sources: CaDmsSources;
}

/**
 * One environment of CA-DMS (`Dev`, `Prod`, ...): its five stacks (network, data, services,
 * control plane, observability), in dependency order, in their own cloud assembly
 * (`cdk.out/assembly-<Stage>/`). The CLI addresses them by path, `cdk deploy 'Dev/*'`; `--all`
 * selects only top-level stacks and so none of these.
 *
 * Stack names stay explicit (`CaDms-<env>-<part>`, what CloudFormation knows them by) rather
 * than the stage's default `<Stage>-<id>`: the stacks were deployed under those names before
 * there were stages, and a new name would be a new stack beside the old one, stateful
 * resources included.
 *
 * @example
 * ```ts
 * const app = new App();
 * const config = loadDeploymentConfig({ configDir: 'config', context: (k) => app.node.tryGetContext(k) });
 * const nginxImage = { directory: stageNginxContext('/tmp/ctx/nginx'), file: 'Dockerfile' };
 * const demoBackendImage = { directory: stageBackendContext('/tmp/ctx/backend'), file: 'Dockerfile' };
 * new CaDmsStage(app, stageId(config.environment), { config, sources: { entries, migrationsDirectory, nginxImage, demoBackendImage } });
 * ```
 */
export class CaDmsStage extends Stage {
  readonly stacks: CaDmsStacks;

  constructor(scope: Construct, id: string, props: CaDmsStageProps) {
    const { config, sources, ...stageProps } = props;
    const env: Environment = stageProps.env ?? {
      region: config.region,
      ...(config.account ? { account: config.account } : {}),
    };
    super(scope, id, { ...stageProps, env });
    const base = `${pascalName(config.name)}-${config.environment}`;
    const tags = { project: config.name, environment: config.environment };
    const common = (part: string) => ({ env, tags, stackName: `${base}-${part}` });

    const network = new NetworkStack(this, 'network', { ...common('network'), config, description: 'CA-DMS network: VPC, endpoints, flow logs' });
    const data = new DataStack(this, 'data', {
      ...common('data'),
      config,
      network: network.network,
      description: 'CA-DMS data (stateful): PostgreSQL shards, replicas, proxies, secrets',
    });
    const services = new ServicesStack(this, 'services', {
      ...common('services'),
      config,
      network: network.network,
      shards: data.shards,
      workerQueue: data.workerQueue.queue,
      nginxImage: sources.nginxImage,
      demoBackendImage: sources.demoBackendImage,
      description: 'CA-DMS services: ECS cluster, Fargate services with nginx sidecars, load balancer',
    });
    const controlPlane = new ControlPlaneStack(this, 'control-plane', {
      ...common('control-plane'),
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
    const observability = new ObservabilityStack(this, 'observability', {
      ...common('observability'),
      config,
      shards: data.shards,
      fleet: services,
      controlPlane: controlPlane.watched,
      workerQueue: data.workerQueue.queue,
      workerDeadLetterQueue: data.workerQueue.deadLetterQueue,
      description: 'CA-DMS observability: dashboard and alarms',
    });
    // Once every stack is built: the others add rules to the data stack's security groups.
    data.checkCapacity();
    applyGuardPosture(this);
    this.stacks = { network, data, services, controlPlane, observability };
  }
}

/** The stage id of an environment: `dev` → `Dev`, `prod` → `Prod` (the CLI's `Dev/*`). */
export function stageId(environment: string): string {
  return pascalName(environment);
}

function pascalName(name: string): string {
  return name.replace(/(^|-)([a-z0-9])/g, (_m, _d: string, c: string) => c.toUpperCase());
}
