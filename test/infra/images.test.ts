/**
 * The images the services run: the ones this repository owns are built from it (CDK image
 * assets staged offline, with no Docker daemon), any other is an explicit, validated
 * configuration value, and the task definitions run both unprivileged.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageBackendContext } from '../../containers/backend/context.js';
import { stageNginxContext } from '../../containers/nginx/context.js';
import { DeploymentConfigError, parseDeploymentConfig } from '../../lib/config/deployment-config.js';
import { APP_CONTAINER, DEMO_BACKEND_USER, NGINX_CONTAINER, NGINX_CONTAINER_USER } from '../../lib/services/sidecar-service.js';
import { parseBackendEnv } from '../../containers/backend/settings.js';
import { resourcesOf, ROOT, unvalidatedSynthesis, type UnvalidatedSynthesis } from './support/synth.js';

type Json = Record<string, unknown>;

function issuesOf(input: unknown): Array<{ path: string; message: string }> {
  try {
    parseDeploymentConfig(input);
  } catch (error) {
    if (error instanceof DeploymentConfigError) return error.issues.map((i) => ({ path: i.path, message: i.message }));
    throw error;
  }
  throw new Error('expected the configuration to be rejected');
}

describe('image configuration', () => {
  it('runs the demo backend built from this repository when no image is named', () => {
    const config = parseDeploymentConfig({});

    for (const svc of Object.values(config.services)) expect(svc.image).toEqual({ kind: 'demo' });
  });

  it('names the path of an image reference that lacks what it needs', () => {
    expect(issuesOf({ services: { frontend: { image: { kind: 'ecr', repository: 'ca-dms/frontend' } } } })).toEqual([
      { path: 'services.frontend.image.tag', message: expect.any(String) as string },
    ]);
  });

  it('names the path and the kinds it accepts for an unknown kind of image', () => {
    const [issue] = issuesOf({ services: { worker: { image: { kind: 'docker', name: 'worker' } } } });

    expect(issue?.path).toBe('services.worker.image.kind');
    expect(issue?.message).toMatch(/"demo".*"ecr".*"registry"/);
  });
});

describe('image build contexts', () => {
  const staged = join(ROOT, 'node_modules', '.cache', 'ca-dms-image-contexts-test');
  afterAll(() => rmSync(staged, { recursive: true, force: true }));

  it.each([
    ['nginx', stageNginxContext, ['Dockerfile', 'entrypoint.sh', 'nginx.conf.template', 'render.mjs']],
    ['backend', stageBackendContext, ['Dockerfile', 'server.mjs']],
  ] as const)('stages the %s image from Debian alone, its code bundled outside the image', (name, stage, files) => {
    const dir = stage(join(staged, name));
    const dockerfile = readFileSync(join(dir, 'Dockerfile'), 'utf8');

    for (const file of files) expect(existsSync(join(dir, file)), file).toBe(true);
    // No stage may need an image CI cannot make: only the Debian base .ci/images imports.
    expect(dockerfile.match(/^FROM .*/gm)).toEqual(['FROM debian:bookworm-slim']);
    expect(dockerfile).toMatch(/^USER 101\d\d:101\d\d$/m);
  });
});

describe('the services stack, the frontend naming its own image', () => {
  const FRONTEND_IMAGE = 'public.ecr.aws/example/frontend:1.2.3';
  let s: UnvalidatedSynthesis;
  // What these tests read (the services' task definitions, the image assets) does not need the
  // functions bundled nor the validation a full synthesis adds (nothing here asserts it), so this
  // configuration, which no other file synthesizes, is synthesized the cheap way (a second, not a
  // full synthesis of its own: bundling, schema check, cdk-nag and cfn-guard).
  beforeAll(() => {
    s = unvalidatedSynthesis({ services: { frontend: { image: { kind: 'registry', uri: FRONTEND_IMAGE } } } });
  });

  const tasks = (): Array<{ app: Json; nginx: Json }> =>
    resourcesOf(s.template(s.stacks.services), 'AWS::ECS::TaskDefinition').map(([, task]) => {
      const containers = task.Properties?.['ContainerDefinitions'] as Json[];
      return {
        app: containers.find((c) => c['Name'] === APP_CONTAINER) as Json,
        nginx: containers.find((c) => c['Name'] === NGINX_CONTAINER) as Json,
      };
    });
  const env = (container: Json, name: string): unknown =>
    (container['Environment'] as Array<{ Name: string; Value: unknown }>).find((e) => e.Name === name)?.Value;

  it('builds exactly two images, the nginx sidecar and the demo backend, as assets', () => {
    const manifest = JSON.parse(readFileSync(join(s.stageOutdir, `${s.stacks.services.artifactId}.assets.json`), 'utf8')) as { dockerImages?: Record<string, unknown> };

    expect(Object.keys(manifest.dockerImages ?? {})).toHaveLength(2);
  });

  it('points every container at an image the deploy builds or the configuration names, none at a repository nobody fills', () => {
    expect(JSON.stringify(s.template(s.stacks.services).toJSON())).not.toContain('ca-dms/backend');
    const images = tasks().flatMap(({ app, nginx }) => [app['Image'], nginx['Image']]);
    const built = images.filter((i) => JSON.stringify(i).includes('container-assets'));

    expect(images.filter((i) => i === FRONTEND_IMAGE)).toHaveLength(1);
    expect(built).toHaveLength(images.length - 1);
  });

  it('runs nginx and the demo backend as their images\' unprivileged users, and leaves another image\'s user to it', () => {
    for (const { app, nginx } of tasks()) {
      expect(nginx['User']).toBe(NGINX_CONTAINER_USER);
      expect(app['User']).toBe(app['Image'] === FRONTEND_IMAGE ? undefined : DEMO_BACKEND_USER);
    }
  });

  it('gives the demo backend every setting it validates: the shards, each shard\'s login secret by the name it reads, the catalog', () => {
    const demo = tasks().filter(({ app }) => app['Image'] !== FRONTEND_IMAGE);
    expect(demo).toHaveLength(3);
    for (const { app } of demo) {
      // What ECS would hand the container, with CloudFormation's references resolved to stand-ins
      // (a secret's ARN to an ARN), and the region ECS sets in every task.
      const resolved = (name: string, value: unknown): string => {
        if (typeof value === 'string') return value;
        return name.endsWith('_DB_SECRET_ARN') ? `arn:aws:secretsmanager:eu-west-1:123456789012:secret:${resolveJoin(value)}` : resolveJoin(value);
      };
      const environment = Object.fromEntries((app['Environment'] as Array<{ Name: string; Value: unknown }>).map((e) => [e.Name, resolved(e.Name, e.Value)]));

      const settings = parseBackendEnv({ ...environment, AWS_REGION: 'eu-west-1' });

      expect(settings.sharding.shards).toHaveLength(s.config.database.shards);
      expect(environment['CATALOG_SHARD_ID']).toBe(settings.sharding.shards[0]?.shard_id);
      expect(settings.logins.kind).toBe('secrets-manager');
      expect(settings.logins.kind === 'secrets-manager' ? [...settings.logins.secretArns.keys()] : []).toEqual(settings.sharding.shards.map((shard) => shard.shard_id));
    }
  });

  it('tells the application the port nginx proxies to', () => {
    for (const { app, nginx } of tasks()) {
      expect(env(nginx, 'NGINX_READ_UPSTREAMS')).toBe(`127.0.0.1:${String(env(app, 'PORT'))}`);
    }
  });
});

/** `Fn::Join` of strings and references, each reference as a host name of its own. */
function resolveJoin(value: unknown): string {
  const join = (value as { 'Fn::Join'?: [string, unknown[]] })['Fn::Join'];
  if (join) return join[1].map((part) => (typeof part === 'string' ? part : resolveJoin(part))).join(join[0]);
  return `ref-${createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 12)}.example.invalid`;
}
